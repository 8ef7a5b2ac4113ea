"""Shared fixtures: a tiny generated Cityscapes-layout dataset, a tiny config, and tool runners."""
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

# Tests also start tool subprocesses; two OpenMP threads per process on two shared cores stall on
# descheduled threads (a small forward went from 0.06 s to 6 s), so every test process uses one.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / 'tools'

# A model that trains in well under a second per iteration at 64x128 on one CPU core.
TINY_CONFIG = """
_base_ = ['{demo_base}']
data_root = '{data_root}'
crop_size = (64, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=crop_size),
    backbone=dict(type='{backbone}'),
    decode_head=dict(type='FCNHead', in_channels=16, channels=16, num_convs=1, concat_input=False, dropout_ratio=0.0,
                     num_classes=19, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end={max_iters}, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters={max_iters}, val_interval={max_iters})
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=10), logger=dict(interval=1))
"""


def write_tiny_config(path: Path, data_root: Path, max_iters: int = 4, backbone: str = 'ERFNet',
                      extra: str = '') -> Path:
    """Write the tiny training config to ``path`` and return it."""
    path.write_text(TINY_CONFIG.format(demo_base=REPO / 'configs' / '_demo_' / 'demo_dataset.py', data_root=data_root,
                                       max_iters=max_iters, backbone=backbone) + extra)
    return path


def run_tool(args: List[str], cwd: Path, env_extra: dict = None, timeout: int = 300,
             expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Run ``python tools/<args...>`` (or a .sh tool) and return the finished process (output captured)."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    env.update(env_extra or {})
    tool = TOOLS / args[0]
    command = (['bash', str(tool)] if tool.suffix == '.sh' else [sys.executable, str(tool)]) + [str(a) for a in args[1:]]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f'{" ".join(command)} failed with {proc.returncode}\n'
                             f'--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}')
    return proc


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory) -> Path:
    """A generated Cityscapes-layout dataset: 8 train and 4 val scenes of 64x128."""
    root = tmp_path_factory.mktemp('data') / 'cityscapes'
    run_tool(['make_demo_data.py', root, '--train', 8, '--val', 4, '--height', 64, '--width', 128], cwd=REPO)
    return root


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, tiny_data):
    """A 4-iteration training run of the tiny config; returns (config, work_dir, stdout+stderr)."""
    work = tmp_path_factory.mktemp('trained')
    config = write_tiny_config(work / 'tiny.py', tiny_data)
    proc = run_tool(['train.py', config, '--work-dir', work / 'run'], cwd=work)
    return config, work / 'run', proc.stdout + proc.stderr


def without_scope(value):
    """``value`` as plain data without the ``_scope_`` keys mmengine adds to dicts read from ``mmseg::`` bases."""
    if isinstance(value, dict):
        return {key: without_scope(item) for key, item in value.items() if key != '_scope_'}
    if isinstance(value, (list, tuple)):
        return type(value)(without_scope(item) for item in value)
    return value
