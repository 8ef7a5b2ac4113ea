# SegFormer, MiT-B5 encoder and mmseg's decoder: the MiT-B0 config with the B5 encoder and its ImageNet
# weights. Targets mmseg's published figure: 49.13 mIoU on ADE20K val (single scale, whole image resized to
# 2048x512).
_base_ = ['./segformer_mit-b0_8xb2-160k_ade20k-512x512.py']
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b5_20220624-658746d9.pth'  # noqa
model = dict(
    backbone=dict(arch='b5', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),  # num_layers [3, 6, 40, 3]
    decode_head=dict(in_channels=[64, 128, 320, 512]))
