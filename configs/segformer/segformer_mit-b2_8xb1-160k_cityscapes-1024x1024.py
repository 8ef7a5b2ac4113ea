# SegFormer, MiT-B2 encoder and mmseg's decoder: the MiT-B0 config with the B2 encoder and its ImageNet
# weights. Targets mmseg's published figure: 81.08 mIoU on Cityscapes val (single scale, sliding window 1024,
# stride 768).
_base_ = ['./segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py']
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b2_20220624-66e8bf70.pth'  # noqa
model = dict(
    backbone=dict(arch='b2', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),  # num_layers [3, 4, 6, 3]
    decode_head=dict(in_channels=[64, 128, 320, 512]))
