# `make demo` (the default MODEL): the plugin's ERFNet with the paper's head (full-resolution
# transposed-conv classifier), trained from scratch on the procedurally drawn demo scenes at 256x512.
# Adam with poly decay as in the paper, but a larger learning rate and no class weights for a run of a
# few minutes on CPU. Data, evaluator and runtime: ./demo_dataset.py.
_base_ = ['./demo_dataset.py']

data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size={{_base_.crop_size}})
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='mmseg_ext.ERFNet', dropout_ratio=(0.03, 0.1), channel_dropout=True),
    decode_head=dict(
        type='mmseg_ext.ERFNetHead',
        in_channels=16,
        num_classes=19,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

max_iters = 1000
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='Adam', lr=2e-3, betas=(0.9, 0.999), weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=1e-5, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=250)
