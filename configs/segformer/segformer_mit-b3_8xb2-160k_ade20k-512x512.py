# SegFormer, MiT-B3 encoder and mmseg's decoder: the MiT-B0 config with the B3 encoder and its ImageNet
# weights. Targets mmseg's published figure: 47.82 mIoU on ADE20K val (single scale, whole image resized to
# 2048x512).
_base_ = ['./segformer_mit-b0_8xb2-160k_ade20k-512x512.py']
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b3_20220624-13b1141c.pth'  # noqa
model = dict(
    backbone=dict(arch='b3', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),  # num_layers [3, 4, 18, 3]
    decode_head=dict(in_channels=[64, 128, 320, 512]))
