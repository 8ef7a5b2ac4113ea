# OCRNet HRNetV2p-W48, Cityscapes 512x1024 crops, 160k iterations, 4 GPUs x 2 images.
# Target: mmseg's published Cityscapes val figure for this recipe, single scale:
# 81.35 mIoU (82.70 with multi-scale + flip).
# mmseg's recipe (ocrnet_hr48_4xb2-160k_cityscapes-512x1024.py) unchanged except the second-stage head, which is
# the plugin's drop-in OCRHead (same state-dict keys: mmseg's checkpoints for this config load strictly).
_base_ = 'mmseg::ocrnet/ocrnet_hr48_4xb2-160k_cityscapes-512x1024.py'
model = dict(decode_head=[
    _base_.model.decode_head[0],
    dict(_base_.model.decode_head[1], type='mmseg_ext.OCRHead'),
])
