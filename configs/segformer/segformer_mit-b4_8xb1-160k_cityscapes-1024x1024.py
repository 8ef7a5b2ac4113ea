# SegFormer, MiT-B4 encoder and mmseg's decoder: the MiT-B0 config with the B4 encoder and its ImageNet
# weights. Targets mmseg's published figure: 81.89 mIoU on Cityscapes val (single scale, sliding window 1024,
# stride 768).
_base_ = ['./segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py']
checkpoint = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segformer/mit_b4_20220624-d588d980.pth'  # noqa
model = dict(
    backbone=dict(arch='b4', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),  # num_layers [3, 8, 27, 3]
    decode_head=dict(in_channels=[64, 128, 320, 512]))
