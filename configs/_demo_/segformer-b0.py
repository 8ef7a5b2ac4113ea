# `make demo MODEL=segformer-b0`: the plugin's MiT-B0 encoder and SegFormer decoder (mmseg's form), trained
# from random initialisation (no ImageNet weights offline) on the procedurally drawn demo scenes at half
# resolution (./demo_dataset.py).
# mmseg's SegFormer recipe (AdamW, no weight decay on norms, decoder lr x10, linear warm-up then poly) with a
# larger learning rate and a schedule of a few minutes on CPU. Data, evaluator and runtime: ./demo_dataset.py.
_base_ = ['./demo_dataset.py', '../_base_/models/segformer_b0_head.py']

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    backbone=dict(type='mmseg_ext.MixVisionTransformer', arch='b0', drop_path_rate=0.1),
    decode_head=dict(_base_.segformer_b0_head, norm_cfg=norm_cfg),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

max_iters = 800
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-4, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'norm': dict(decay_mult=0.),
        'head': dict(lr_mult=10.)
    }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=50, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=200)
