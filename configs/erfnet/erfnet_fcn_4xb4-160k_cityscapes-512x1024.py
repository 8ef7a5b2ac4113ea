# Reproduces mmseg's ERFNet recipe (mmseg::erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py: ERFNet
# trained from scratch with an FCNHead at 1/2 resolution, SGD lr 0.01 with poly decay, 160k iterations,
# 4 GPUs x 4 images, 512x1024 crops) with the plugin's backbone, which loads mmseg's checkpoints
# unchanged and gives the same outputs.
# Target: mmseg's published 71.08 mIoU on Cityscapes val (72.6 with multi-scale + flip testing),
# checkpoint erfnet_fcn_4x4_512x1024_160k_cityscapes_20211126_082056-03d333ed.pth.
_base_ = ['mmseg::erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py']

model = dict(backbone=dict(type='mmseg_ext.ERFNet'))
