# SegFormer's all-MLP decoder for MiT-B0 (the plugin's SegformerHead in mmseg's form) on 19 classes; a config
# sets what its recipe changes: dict(_base_.segformer_b0_head, norm_cfg=..., num_classes=...).
segformer_b0_head = dict(
    type='mmseg_ext.SegformerHead',
    head_style='mmseg',
    in_channels=[32, 64, 160, 256],
    in_index=[0, 1, 2, 3],
    channels=256,
    dropout_ratio=0.1,
    num_classes=19,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
