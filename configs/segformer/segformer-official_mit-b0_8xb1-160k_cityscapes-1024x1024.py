# SegFormer, MiT-B0 encoder and the official decoder of the NVlabs and Hugging Face code (per-stage linear
# projections with bias, no norm or activation, concatenation c4..c1, width 256). Targets the paper's figure:
# 76.2 mIoU on Cityscapes val (1024x1024, sliding window). Converted NVlabs / Hugging Face checkpoints run
# with this config.
_base_ = ['./segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py']
model = dict(decode_head=dict(head_style='official', channels=256))
