# Data, evaluation and runtime for the embedded demo (`make demo`): the procedurally drawn street
# scenes written by tools/dataset_converters/make_demo_data.py in Cityscapes layout, read by mmseg's own
# CityscapesDataset and scored by mmseg's IoUMetric. The model's data preprocessor (ImageNet mean/std,
# BGR->RGB, padding to the crop) is set here for every demo; model configs beside this file add the
# rest of the model, the optimizer and the schedule.
_base_ = [
    'mmseg::_base_/datasets/cityscapes.py', 'mmseg::_base_/default_runtime.py', '../_base_/data_preprocessor.py'
]

data_root = 'data/demo_cityscapes'
# The scenes are 256x512; the demos train on 128x256 crops of them resized around half resolution and
# test at half resolution (predictions are scored at the labels' full size), to fit minutes on a CPU.
crop_size = (128, 256)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(data_preprocessor=dict(_base_.data_preprocessor, size=crop_size))

val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0)
