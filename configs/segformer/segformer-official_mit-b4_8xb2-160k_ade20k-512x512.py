# SegFormer, MiT-B4 encoder and the official decoder of the NVlabs and Hugging Face code (per-stage linear
# projections with bias, no norm or activation, concatenation c4..c1, width 768). Targets the paper's figure:
# 50.3 mIoU on ADE20K val (single scale). Converted NVlabs / Hugging Face checkpoints run with this config.
_base_ = ['./segformer_mit-b4_8xb2-160k_ade20k-512x512.py']
model = dict(decode_head=dict(head_style='official', channels=768))
