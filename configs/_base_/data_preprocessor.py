# mmseg's data preprocessor for models trained on ImageNet-normalised RGB images (mmseg's Cityscapes and
# ADE20K recipes): BGR->RGB, ImageNet mean and std, zero padding (255 in the labels). A config that pads to
# its crop writes `data_preprocessor=dict(_base_.data_preprocessor, size=crop_size)`.
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
