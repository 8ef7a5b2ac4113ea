# Reproduces stage 1 of 2 of the ERFNet paper's training (Romera et al., "ERFNet: Efficient Residual
# Factorized ConvNet for Real-time Semantic Segmentation", T-ITS 2018; the authors' erfnet_pytorch
# train/main.py): the encoder alone with a 1x1 classifier at 1/8 resolution, the loss against labels
# sampled down to 1/8, from scratch. Images resized to 1024x512 (no crop), RGB in [0, 1], random
# horizontal flip; Adam (lr 5e-4, betas 0.9/0.999, eps 1e-8, weight decay 1e-4), poly decay (power 0.9)
# per epoch, 150 epochs of batch 6, dropout 0.03 / 0.3 (channel-wise) in the 64 / 128-channel stages,
# the authors' encoder-stage class weights (1 / ln(1.02 + class frequency)).
# Not reproduced: the authors' random +-2 pixel translation.
# Stage 2, configs/erfnet/erfnet_paper_1xb6-150e_cityscapes-512x1024.py, loads this stage's last
# checkpoint (work_dirs/erfnet_paper-encoder_1xb6-150e_cityscapes-512x1024/epoch_150.pth). The
# published figure belongs to the full network (see stage 2); the authors report no figure for the
# encoder stage on its own.
# Also the config for the authors' encoder-stage checkpoints converted by tools/model_converters/convert_checkpoint.py.
_base_ = ['mmseg::_base_/datasets/cityscapes.py', 'mmseg::_base_/default_runtime.py']

# The authors' encoder-stage weights for Cityscapes train ids 0-18 (their id 19, the ignored label,
# has weight 0 and is mmseg's ignore_index 255 here).
encoder_class_weight = [
    2.3653597831726, 4.4237880706787, 2.9691488742828, 5.3442072868347, 5.2983593940735,
    5.2275490760803, 5.4394111633301, 5.3659925460815, 3.4170460700989, 5.2414722442627,
    4.7376127243042, 5.2286224365234, 5.455126285553, 4.3019247055054, 5.4264230728149,
    5.4331531524658, 5.433765411377, 5.4631009101868, 5.3947434425354
]
crop_size = (512, 1024)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[0., 0., 0.],  # the authors feed ToTensor() images: RGB scaled to [0, 1]
    std=[255., 255., 255.],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='mmseg_ext.ERFNet',
        dropout_ratio=(0.03, 0.3),
        channel_dropout=True,
        encoder_only=True),
    decode_head=dict(
        type='mmseg_ext.ERFNetHead',
        in_channels=128,
        encoder_only=True,
        num_classes=19,
        loss_decode=dict(type='mmseg_ext.ClassWeightedCrossEntropyLoss', class_weight=encoder_class_weight)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=(1024, 512), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1024, 512), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=6,
    num_workers=4,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=4, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_epochs = 150
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='Adam', lr=5e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0., begin=0, end=max_epochs, by_epoch=True)
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=10)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=True),
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=10, max_keep_ckpts=3,
                    save_best='mIoU'))
log_processor = dict(by_epoch=True)
