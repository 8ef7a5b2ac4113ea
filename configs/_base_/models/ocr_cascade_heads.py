# OCRNet's two-stage cascade head over a four-stage backbone (HRNet branches or MiT stages), for
# `model = dict(type='CascadeEncoderDecoder', num_stages=2, decode_head=[...])`:
#   1. soft_region_head: mmseg's FCNHead on the concatenated stages gives the soft object regions
#      (loss weight 0.4, as in OCRNet);
#   2. ocr_head: the plugin's OCRHead gives the final logits from the same features and those regions.
# A config sets the widths where it uses them:
#   dict(_base_.soft_region_head, in_channels=stage_channels, channels=...),
#   dict(_base_.ocr_head, in_channels=stage_channels, channels=MID, ocr_channels=KEY)
# and, where its recipe differs, norm_cfg, align_corners, dropout_ratio or the losses.
soft_region_head = dict(
    type='FCNHead',
    in_index=(0, 1, 2, 3),
    input_transform='resize_concat',
    kernel_size=1,
    num_convs=1,
    concat_input=False,
    dropout_ratio=-1,
    num_classes=19,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4))
ocr_head = dict(
    type='mmseg_ext.OCRHead',
    in_index=(0, 1, 2, 3),
    input_transform='resize_concat',
    dropout_ratio=-1,
    num_classes=19,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
