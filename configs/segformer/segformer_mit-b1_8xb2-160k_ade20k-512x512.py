# SegFormer, MiT-B1 encoder and mmseg's decoder: the MiT-B0 config with the B1 encoder and its ImageNet
# weights. Targets mmseg's published figure: 40.97 mIoU on ADE20K val (single scale, whole image resized to
# 2048x512).
_base_ = ['./segformer_mit-b0_8xb2-160k_ade20k-512x512.py']
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b1_20220624-02e5a6a1.pth'  # noqa
model = dict(
    backbone=dict(arch='b1', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),  # num_layers [2, 2, 2, 2]
    decode_head=dict(in_channels=[64, 128, 320, 512]))
