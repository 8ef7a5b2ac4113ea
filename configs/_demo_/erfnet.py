# `make demo` (the default MODEL): the plugin's ERFNet with the paper's head (full-resolution
# transposed-conv classifier), trained from scratch on the procedurally drawn demo scenes.
# To fit 10 minutes of training on 2 CPU cores, the scenes are seen at half resolution (128x256 crops,
# batch 8: ./demo_dataset.py). Adam with poly decay and the paper's class weights (which lift the thin pole,
# sign and person classes), as in the paper, but a larger learning rate and no dropout for so short a
# run. Data, evaluator and runtime: ./demo_dataset.py.
_base_ = ['./demo_dataset.py']

# The ERFNet authors' decoder-stage weights for the 19 Cityscapes train ids (configs/erfnet/erfnet_paper_*).
class_weight = [
    2.8149201869965, 6.9850029945374, 3.7890393733978, 9.9428062438965, 9.7702074050903,
    9.5110931396484, 10.311357498169, 10.026463508606, 4.6323022842407, 9.5608062744141,
    7.8698215484619, 9.5168733596802, 10.373730659485, 6.6616044044495, 10.260489463806,
    10.287888526917, 10.289801597595, 10.405355453491, 10.138095855713
]
model = dict(
    type='EncoderDecoder',
    backbone=dict(type='mmseg_ext.ERFNet', dropout_ratio=0.0),
    decode_head=dict(
        type='mmseg_ext.ERFNetHead',
        in_channels=16,
        num_classes=19,
        loss_decode=dict(type='mmseg_ext.ClassWeightedCrossEntropyLoss', class_weight=class_weight)),
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
