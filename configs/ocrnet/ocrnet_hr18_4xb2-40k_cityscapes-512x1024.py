# OCRNet HRNetV2p-W18, Cityscapes 512x1024 crops, 40k iterations, 4 GPUs x 2 images.
# Target: mmseg's published Cityscapes val figure for this recipe, single scale:
# 77.72 mIoU (79.49 with multi-scale + flip).
# mmseg's recipe (ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py) unchanged except the second-stage head, which is
# the plugin's drop-in OCRHead (same state-dict keys: mmseg's checkpoints for this config load strictly).
_base_ = 'mmseg::ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py'
model = dict(decode_head=[
    _base_.model.decode_head[0],
    dict(_base_.model.decode_head[1], type='mmseg_ext.OCRHead'),
])
