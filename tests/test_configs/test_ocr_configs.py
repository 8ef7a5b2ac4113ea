"""configs/ocrnet and the OCRNet demo: parse, name their target figure, build with SyncBN on one CPU process."""
import glob
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from mmseg_ext.models.backbones.hrnet import HRNet as PluginHRNet
from mmseg_ext.models.decode_heads.ocr_head import OCRHead
from utils import REPO, training_batch, without_scope

CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'ocrnet', '*.py')))
DEMO = osp.join(REPO, 'configs', '_demo_', 'ocrnet-hr18s.py')
EXPECTED = {f'ocrnet_hr{arch}_4xb2-{sched}_cityscapes-512x1024.py'
            for arch in ('18s', '18', '48') for sched in ('40k', '80k', '160k')} | {
    'ocrnet_hr48-authors_4xb3-120k_cityscapes-512x1024.py', 'ocrnet_mit-b0_8xb1-160k_cityscapes-1024x1024.py',
    'ocrnet_mit-b2_8xb1-160k_cityscapes-1024x1024.py'}


def header(path: str) -> str:
    lines = []
    for line in open(path):
        if not line.startswith('#'):
            break
        lines.append(line)
    return ''.join(lines)


def test_every_mmseg_ocrnet_hrnet_recipe_has_a_plugin_config():
    assert EXPECTED <= {osp.basename(path) for path in CONFIGS}


@pytest.mark.parametrize('path', CONFIGS + [DEMO], ids=osp.basename)
def test_config_names_its_target_and_uses_the_plugin_head(path):
    text = header(path)
    assert 'Target' in text or 'target' in text, f'{path} has no target in its header comment'
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmseg'
    assert cfg.model.type == 'CascadeEncoderDecoder' and cfg.model.num_stages == 2
    assert cfg.model.decode_head[0].type == 'FCNHead'
    assert cfg.model.decode_head[1].type == 'mmseg_ext.OCRHead'
    assert cfg.model.decode_head[0].loss_decode.loss_weight == 0.4


def test_mmseg_recipes_are_unchanged_but_the_head():
    from mmseg import __file__ as mmseg_init
    for name in sorted(EXPECTED):
        if not name.startswith('ocrnet_hr') or 'authors' in name:
            continue
        ours = Config.fromfile(osp.join(REPO, 'configs', 'ocrnet', name))
        theirs = Config.fromfile(osp.join(osp.dirname(mmseg_init), '.mim', 'configs', 'ocrnet', name))
        ours.model.decode_head[1].type = 'OCRHead'
        for key in ('model', 'train_dataloader', 'val_dataloader', 'optim_wrapper', 'param_scheduler',
                    'train_cfg', 'test_cfg'):
            assert without_scope(ours[key]) == without_scope(theirs[key]), (name, key)


def distinct_models():
    """One config per distinct model (schedules share their model)."""
    seen, paths = set(), []
    for path in CONFIGS:
        model = Config.fromfile(path).model
        model.pop('data_preprocessor', None)
        key = repr(model.to_dict())
        if key not in seen:
            seen.add(key)
            paths.append(path)
    return paths


@pytest.mark.parametrize('path', distinct_models(), ids=osp.basename)
def test_builds_with_syncbn_on_one_cpu_process(path):
    init_default_scope('mmseg')
    cfg = Config.fromfile(path).model
    cfg.pop('pretrained', None)
    cfg.backbone.pop('init_cfg', None)
    model = MODELS.build(cfg)
    assert isinstance(model.decode_head[1], OCRHead)
    assert any(isinstance(module, nn.SyncBatchNorm) for module in model.modules())
    if 'authors' in path:
        assert isinstance(model.backbone, PluginHRNet) and model.backbone.align_corners
        assert model.decode_head[1].align_corners and model.decode_head[1].dropout.p == 0.05


@pytest.mark.parametrize('name', ['ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py',
                                  'ocrnet_mit-b0_8xb1-160k_cityscapes-1024x1024.py'])
def test_syncbn_model_trains_and_predicts_on_one_cpu_process(name):
    """SyncBN without a process group falls back to plain BN: a loss step and inference work."""
    init_default_scope('mmseg')
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'ocrnet', name)).model
    cfg.pop('pretrained', None)
    cfg.backbone.pop('init_cfg', None)
    cfg.decode_head[1].channels, cfg.decode_head[1].ocr_channels = 32, 16
    model = MODELS.build(cfg)
    images, samples = training_batch(64, 64)
    model.train()
    losses = model.loss(images, samples)
    total = sum(value for key, value in losses.items() if 'loss' in key)
    total.backward()
    assert torch.isfinite(total)
    assert model.decode_head[1].conv_seg.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        predictions = model.predict(images, samples)
    assert predictions[0].pred_sem_seg.data.shape == (1, 64, 64)
