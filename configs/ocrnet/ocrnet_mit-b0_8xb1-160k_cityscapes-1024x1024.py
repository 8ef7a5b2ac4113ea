# OCR on SegFormer's MiT-B0 (a combination neither mmseg nor the OCR authors ship), Cityscapes.
# Target: no published figure exists for this model. It should beat SegFormer-B0 with mmseg's
# all-MLP head under the same recipe, 76.54 mIoU on Cityscapes val (slide inference, single scale).
#
# SegFormer's recipe unchanged (8 GPUs x 1 image, 1024x1024 crops, 160k iterations, AdamW 6e-5 with
# 10x learning rate on the heads, ImageNet MiT-B0 weights, 1024x1024 sliding window with stride 768);
# the all-MLP head is replaced by the OCR cascade: an FCN head on the concatenated MiT stages gives
# the soft object regions (loss weight 0.4, as in OCRNet) and the plugin's OCRHead the final logits.
# The head widths are scaled to B0's 512 concatenated channels (SegFormer-B0 uses a 256-wide head).
_base_ = 'mmseg::segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py'

norm_cfg = dict(type='SyncBN', requires_grad=True)
stage_channels = [32, 64, 160, 256]
model = dict(
    type='CascadeEncoderDecoder',
    num_stages=2,
    # The base's MiT settings and ImageNet weights, on the plugin's encoder.
    backbone=dict(type='mmseg_ext.MixVisionTransformer'),
    decode_head=[
        dict(
            type='FCNHead',
            in_channels=stage_channels,
            in_index=(0, 1, 2, 3),
            input_transform='resize_concat',
            channels=256,
            kernel_size=1,
            num_convs=1,
            concat_input=False,
            dropout_ratio=-1,
            num_classes=19,
            norm_cfg=norm_cfg,
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
        dict(
            type='mmseg_ext.OCRHead',
            in_channels=stage_channels,
            in_index=(0, 1, 2, 3),
            input_transform='resize_concat',
            channels=256,
            ocr_channels=128,
            dropout_ratio=0.1,  # SegformerHead's dropout
            num_classes=19,
            norm_cfg=norm_cfg,
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    ])
