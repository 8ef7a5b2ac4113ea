# `make demo` (the default MODEL): the plugin's ERFNet with the paper's head (full-resolution
# transposed-conv classifier), trained from scratch on the procedurally drawn demo scenes.
# To fit 10 minutes of training on 2 CPU cores, the scenes are seen at half resolution (128x256 crops,
# batch 8: ./demo_dataset.py). Adam with poly decay and the paper's class weights (which lift the thin pole,
# sign and person classes), as in the paper, but a larger learning rate and no dropout for so short a
# run. Data, evaluator and runtime: ./demo_dataset.py.
_base_ = ['./demo_dataset.py', '../_base_/erfnet_class_weights.py']

model = dict(
    type='EncoderDecoder',
    backbone=dict(type='mmseg_ext.ERFNet', dropout_ratio=0.0),
    decode_head=dict(
        type='mmseg_ext.ERFNetHead',
        in_channels=16,
        num_classes=19,
        loss_decode=dict(
            type='mmseg_ext.ClassWeightedCrossEntropyLoss', class_weight=_base_.erfnet_decoder_class_weight)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

max_iters = 800
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='Adam', lr=2e-3, betas=(0.9, 0.999), weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=1e-5, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=400)
