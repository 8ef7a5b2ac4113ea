# SegFormer, MiT-B5 encoder and the official decoder of the NVlabs and Hugging Face code (per-stage linear
# projections with bias, no norm or activation, concatenation c4..c1, width 768). Targets the paper's figure:
# 82.4 mIoU on Cityscapes val (1024x1024, sliding window). Converted NVlabs / Hugging Face checkpoints run
# with this config.
_base_ = ['./segformer_mit-b5_8xb1-160k_cityscapes-1024x1024.py']
model = dict(decode_head=dict(head_style='official', channels=768))
