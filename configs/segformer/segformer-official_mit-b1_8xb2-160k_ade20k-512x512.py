# SegFormer, MiT-B1 encoder and the official decoder of the NVlabs and Hugging Face code (per-stage linear
# projections with bias, no norm or activation, concatenation c4..c1, width 256). Targets the paper's figure:
# 42.2 mIoU on ADE20K val (single scale). Converted NVlabs / Hugging Face checkpoints run with this config.
_base_ = ['./segformer_mit-b1_8xb2-160k_ade20k-512x512.py']
model = dict(decode_head=dict(head_style='official', channels=256))
