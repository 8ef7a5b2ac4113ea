# HRNetV2-W48 + OCR, the authors' Cityscapes recipe (HRNet-Semantic-Segmentation, branch HRNet-OCR,
# experiments/cityscapes/seg_hrnet_ocr_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml).
# Target: 81.6 mIoU on Cityscapes val (the authors' figure for train-set training, single scale, no
# flip). This is also the config that tools/model_converters/convert_checkpoint.py prints for the authors' released
# HRNet-OCR checkpoints: the numerics follow theirs (align_corners=True in HRNet's fuse layers, in the
# branch concatenation and in the final resize; aux head loss weight 0.4; dropout 0.05 before the
# classifier; losses averaged over labelled pixels).
#
# Recipe: 484 epochs of 2975 images at batch 12 = 120k iterations of 4 GPUs x 3 images; SGD lr 0.01,
# momentum 0.9, weight decay 5e-4, poly decay (power 0.9) to 0; random rescale of the 2048x1024 base
# size by 0.5-2.1, random 512x1024 crop, flip, no colour jitter; whole-image 1024x2048 testing.
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py', 'mmseg::_base_/default_runtime.py',
    '../_base_/data_preprocessor.py', '../_base_/models/ocr_cascade_heads.py'
]

crop_size = (512, 1024)
norm_cfg = dict(type='SyncBN', requires_grad=True)
branch_channels = [48, 96, 192, 384]
model = dict(
    type='CascadeEncoderDecoder',
    data_preprocessor=dict(_base_.data_preprocessor, size=crop_size),
    num_stages=2,
    pretrained='open-mmlab://msra/hrnetv2_w48',  # the authors' ImageNet HRNetV2-W48
    backbone=dict(
        type='mmseg_ext.HRNet',
        align_corners=True,
        norm_cfg=norm_cfg,
        norm_eval=False,
        extra=dict(
            stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(4, ),
                        num_channels=(64, )),
            stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(4, 4),
                        num_channels=(48, 96)),
            stage3=dict(num_modules=4, num_branches=3, block='BASIC', num_blocks=(4, 4, 4),
                        num_channels=(48, 96, 192)),
            stage4=dict(num_modules=3, num_branches=4, block='BASIC', num_blocks=(4, 4, 4, 4),
                        num_channels=(48, 96, 192, 384)))),
    decode_head=[
        # The authors' aux_head: soft object regions from the concatenated branches.
        dict(_base_.soft_region_head, in_channels=branch_channels, channels=sum(branch_channels), align_corners=True,
             loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4, avg_non_ignore=True)),
        # conv3x3_ocr + ocr_gather_head + ocr_distri_head + cls_head.
        dict(
            _base_.ocr_head,
            in_channels=branch_channels,
            channels=512,  # MODEL.OCR.MID_CHANNELS
            ocr_channels=256,  # MODEL.OCR.KEY_CHANNELS
            scale=1,  # MODEL.OCR.SCALE
            gather_scale=1.0,
            dropout_ratio=0.05,  # MODEL.OCR.DROPOUT, right before the classifier as in their code
            align_corners=True,
            loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True)),
    ],
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 1024), ratio_range=(0.5, 2.1), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=3, num_workers=4, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = val_dataloader

optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=120000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=120000, val_interval=8000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
