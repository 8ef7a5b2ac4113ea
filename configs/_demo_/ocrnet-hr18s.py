# `make demo MODEL=ocrnet-hr18s`: OCRNet with mmseg's HRNetV2-W18-Small, mmseg's FCNHead (soft object
# regions, loss weight 0.4) and the plugin's OCRHead, trained from random initialisation (no ImageNet
# weights offline) on the procedurally drawn demo scenes, then evaluated on the demo val split.
# Target: a sanity check, not a benchmark figure: the large classes (road, sidewalk, building,
# vegetation, sky, car) must be learnt; the thin pole / sign / person classes need longer training at
# this resolution (results: docs/ocrnet.md#demo).
# Differences from the Cityscapes recipe, all for minutes of CPU training: half the demo resolution
# (128x256 scenes), plain BN (one process), a narrower OCR head (128 mid / 64 key channels instead of
# 512 / 256), AdamW with a short warm-up and poly decay. Data, evaluator and runtime: ./demo_dataset.py.
_base_ = ['./demo_dataset.py', '../_base_/models/ocr_cascade_heads.py']

# Half the demo resolution: whole 128x256 scenes (HRNet's 1/4-resolution branch is then 32x64).
train_dataloader = dict(batch_size=4)
norm_cfg = dict(type='BN', requires_grad=True)
branch_channels = [18, 36, 72, 144]
model = dict(
    type='CascadeEncoderDecoder',
    num_stages=2,
    backbone=dict(
        type='HRNet',
        norm_cfg=norm_cfg,
        norm_eval=False,
        extra=dict(
            stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(2, ),
                        num_channels=(64, )),
            stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(2, 2),
                        num_channels=(18, 36)),
            stage3=dict(num_modules=3, num_branches=3, block='BASIC', num_blocks=(2, 2, 2),
                        num_channels=(18, 36, 72)),
            stage4=dict(num_modules=2, num_branches=4, block='BASIC', num_blocks=(2, 2, 2, 2),
                        num_channels=(18, 36, 72, 144)))),
    decode_head=[
        dict(_base_.soft_region_head, in_channels=branch_channels, channels=sum(branch_channels),
             norm_cfg=norm_cfg),
        dict(_base_.ocr_head, in_channels=branch_channels, channels=128, ocr_channels=64, norm_cfg=norm_cfg),
    ],
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

max_iters = 240
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.), 'bn': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=20, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=120)
default_hooks = dict(logger=dict(interval=10))
