"""Helpers shared by the test modules: paths, tool runners, the tiny training config, weight randomisers,
unusable checkpoint files, and the deployment tests' models and batches.

Fixtures live in conftest.py (pytest finds them); everything a test imports comes from here. The
``*_reference.py`` modules beside this one hold only the papers' reference networks.
"""
import importlib.util
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / 'tools'
CONFIGS = REPO / 'configs'

# A four-stage HRNet small enough for unit tests (mmseg's `extra` format).
HRNET_TINY_EXTRA = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ), num_channels=(8, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=(4, 8)),
    stage3=dict(num_modules=2, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=(4, 8, 16)),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1),
                num_channels=(4, 8, 16, 32)))

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
    path.write_text(TINY_CONFIG.format(demo_base=CONFIGS / '_demo_' / 'demo_dataset.py', data_root=data_root,
                                       max_iters=max_iters, backbone=backbone) + extra)
    return path


def run_tool(args: List[str], cwd: Path, env_extra: Optional[dict] = None, timeout: int = 300,
             expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Run ``python tools/<args...>`` (or a .sh tool) and return the finished process (output captured);
    ``args[0]`` is the tool's path relative to tools/, e.g. ``'analysis_tools/benchmark.py'``."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    env.update(env_extra or {})
    tool = TOOLS / args[0]
    command = (['bash', str(tool)] if tool.suffix == '.sh' else [sys.executable, str(tool)]) + [str(a) for a in args[1:]]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f'{" ".join(command)} failed with {proc.returncode}\n'
                             f'--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}')
    return proc


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` in this process (tools/ is not a package), to call its functions; ``name`` is
    relative to tools/, e.g. ``'analysis_tools/benchmark'``."""
    spec = importlib.util.spec_from_file_location(f'tools_{name.replace("/", "_")}', TOOLS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mmseg_config_path(relative: str) -> str:
    """Path of a config shipped inside the installed mmseg package (``mmseg::relative``)."""
    import mmseg
    return os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'configs', relative)


def without_scope(value):
    """``value`` as plain data without the ``_scope_`` keys mmengine adds to dicts read from ``mmseg::`` bases."""
    if isinstance(value, dict):
        return {key: without_scope(item) for key, item in value.items() if key != '_scope_'}
    if isinstance(value, (list, tuple)):
        return type(value)(without_scope(item) for item in value)
    return value


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f'shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}'
    return float((a - b).abs().max())


def batch_norms(model: nn.Module) -> Iterator[nn.modules.batchnorm._BatchNorm]:
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, eval_mode: bool = False) -> nn.Module:
    """Give every parameter and norm statistic non-trivial random values (in place); returns ``module``.

    Matrices and kernels: N(0, 1/fan_in); 1-D weights (norm scales): 1 + N(0, 0.2^2); biases and running
    means: N(0, 0.1^2); running variances: U(0.5, 1.5). For deep conv stacks use
    :func:`randomize_conv_bn_`, whose scales keep activations bounded through dozens of layers. ``eval_mode`` also switches to eval mode (some
    mmseg modules' ``train()`` returns None, so ``randomize_(m).eval()`` cannot be chained on them).
    """
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith('running_var'):
            tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
        elif tensor.dim() > 1:
            tensor.copy_(noise / tensor[0].numel()**0.5)
        elif name.endswith('weight'):
            tensor.copy_(1 + 0.2 * noise)
        else:
            tensor.copy_(0.1 * noise)
    if eval_mode:
        module.eval()
    return module


@torch.no_grad()
def randomize_conv_bn_(model: nn.Module, seed: int = 0, eval_mode: bool = False) -> nn.Module:
    """Randomise the convolutions (He-scaled, N(0, 2/fan_in); biases N(0, 0.3^2)) and batch norms (scales
    U(0.3, 0.8), statistics non-trivial) of a deep conv network such as HRNet, leaving other layers as
    built; returns ``model``. Activations stay of order one through the whole stack, so absolute
    tolerances keep their meaning."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            channels = module.num_features
            module.weight.copy_(0.3 + 0.5 * torch.rand(channels, generator=generator))
            module.bias.copy_(0.1 * torch.randn(channels, generator=generator))
            module.running_mean.copy_(0.2 * torch.randn(channels, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
            module.num_batches_tracked.fill_(7)
        elif isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in)**0.5)
            if module.bias is not None:
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
    if eval_mode:
        model.eval()
    return model


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """The benchmark's batch-norm randomiser with wider statistics, as the tests' tolerances were set for
    (random BN otherwise sits at identity and hides folding and layout errors)."""
    from mmseg_ext.benchmark import randomize_batch_norms as randomize
    return randomize(model, seed, mean_std=0.3, var_range=(0.25, 1.75), bias_std=0.2, batches_tracked=1000)


def saved_hf_segformer(directory: Path, model_class: str, num_labels: int, seed: int = 4):
    """A random-weight Hugging Face SegFormer (MiT-B0) model of ``transformers.<model_class>``, saved with
    ``save_pretrained`` (config.json and safetensors) into ``directory``; returns ``(directory, model)``."""
    import transformers
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(transformers.SegformerConfig(num_labels=num_labels))
    model = randomize_(model, seed=seed).eval()
    model.save_pretrained(directory)
    return directory, model


# ----------------------------------------------------------------------------------------------------------
# Files that are not usable checkpoints: foreign files, damaged checkpoints, a hostile pickle.

# name -> (exception class name in mmseg_ext.checkpoint.safe_unpickler, a phrase the one-line message must contain)
UNUSABLE_CHECKPOINTS: Dict[str, Tuple[str, str]] = {
    'random_bytes': ('NotACheckpointError', 'unrecognised binary data'),
    'png_image': ('NotACheckpointError', 'is a PNG image'),
    'text_file': ('NotACheckpointError', 'is a text file'),
    'web_page': ('NotACheckpointError', 'is a web page'),
    'lfs_pointer': ('NotACheckpointError', 'Git LFS pointer'),
    'zip_of_images': ('NotACheckpointError', 'zip archive without data.pkl'),
    'empty_file': ('DamagedCheckpointError', 'the file is empty'),
    'truncated_zip': ('DamagedCheckpointError', 'cut off while being written or copied'),
    'crc_corrupted_zip': ('DamagedCheckpointError', 'fails its CRC-32 check'),
    'legacy_truncated': ('DamagedCheckpointError', 'probably'),
    'hostile_pickle': ('UnsafeCheckpointError', 'it asks for posix.system'),
}


class RunsCommand:
    """A pickle payload: unpickling it would run ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def small_checkpoint(path: Path) -> Path:
    """A valid mmengine-style checkpoint with two tensors (a few KB)."""
    generator = torch.Generator().manual_seed(0)
    torch.save({'meta': {'iter': 1}, 'state_dict': {'w': torch.randn(32, 32, generator=generator),
                                                    'b': torch.randn(32, generator=generator)}}, path)
    return path


def _entry_data_offset(archive_path: Path, suffix: str) -> int:
    """Offset of the stored bytes of the zip entry whose name ends with ``suffix``."""
    with zipfile.ZipFile(archive_path) as archive:
        info = next(info for info in archive.infolist() if info.filename.endswith(suffix))
    with open(archive_path, 'rb') as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack('<HH', file.read(4))
    return info.header_offset + 30 + name_length + extra_length


def write_sample(name: str, directory: Path, good: Path) -> Path:
    """Write the sample ``name`` (a key of :data:`UNUSABLE_CHECKPOINTS`) into ``directory``; ``good`` is a valid
    checkpoint that damaged samples start from."""
    path = directory / f'{name}.pth'
    content = good.read_bytes()
    if name == 'random_bytes':
        path.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)))
    elif name == 'png_image':
        import cv2
        ok, encoded = cv2.imencode('.png', np.zeros((8, 8, 3), np.uint8))
        assert ok
        path.write_bytes(encoded.tobytes())
    elif name == 'text_file':
        path.write_text('model weights will be uploaded here\n')
    elif name == 'web_page':
        path.write_text('<!DOCTYPE html>\n<html><body>Sign in to download</body></html>\n')
    elif name == 'lfs_pointer':
        path.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4096\n')
    elif name == 'zip_of_images':
        with zipfile.ZipFile(path, 'w') as archive:
            archive.writestr('images/0001.png', b'not really')
    elif name == 'empty_file':
        path.write_bytes(b'')
    elif name == 'truncated_zip':
        path.write_bytes(content[:len(content) * 2 // 3])
    elif name == 'crc_corrupted_zip':
        damaged = bytearray(content)
        damaged[_entry_data_offset(good, 'data/0') + 10] ^= 0xFF  # one tensor byte; torch would load it silently
        path.write_bytes(bytes(damaged))
    elif name == 'legacy_truncated':
        legacy = directory / 'legacy_source.pth'
        torch.save({'w': torch.zeros(64)}, legacy, _use_new_zipfile_serialization=False)
        path.write_bytes(legacy.read_bytes()[:200])
    elif name == 'hostile_pickle':
        torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': RunsCommand(directory / 'pwned')}, path)
    else:
        raise KeyError(name)
    return path


# ----------------------------------------------------------------------------------------------------------
# Deployment: small segmentors with non-trivial BN statistics, mmseg-style test batches, the plugin's ONNX
# Runtime segmentor built from an exported file.

FAMILY_CONFIGS = {
    'erfnet-fcn': 'configs/erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py',
    'erfnet-paper-head': 'configs/_demo_/erfnet.py',
    'segformer-b0': 'configs/segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py',
    'segformer-b0-official': 'configs/segformer/segformer-official_mit-b0_8xb1-160k_cityscapes-1024x1024.py',
    'ocrnet-hr18s': 'configs/ocrnet/ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py',
    'ocr-mit-b0': 'configs/ocrnet/ocrnet_mit-b0_8xb1-160k_cityscapes-1024x1024.py',
}


def family_model(name: str, seed: int = 0, cfg_options: Optional[dict] = None) -> Tuple[Config, torch.nn.Module]:
    """The family's config and its segmentor with random weights and random BN statistics, eval mode."""
    from mmseg_ext.builder import build_segmentor
    from mmseg_ext.launch import load_run_config
    cfg = load_run_config(str(REPO / FAMILY_CONFIGS[name]), cfg_options=dict(cfg_options or {}))
    torch.manual_seed(seed)
    model = build_segmentor(cfg)
    randomize_batch_norms(model, seed)
    return cfg, model.eval()


def export(model: torch.nn.Module, cfg: Config, path: Path, shape: Sequence[int], dynamic: bool,
           **kwargs) -> Path:
    from mmseg_ext.deploy.export import export_segmentor
    export_segmentor(model, cfg, str(path), tuple(shape), dynamic=dynamic, **kwargs)
    return path


def training_batch(height: int, width: int, count: int = 2, seed: int = 0) -> Tuple[torch.Tensor, list]:
    """``count`` normalised random images and data samples with random labels of 19 classes, for ``model.loss``."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, height, width, generator=generator)
    samples = []
    for _ in range(count):
        sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             pad_shape=(height, width)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, height, width), generator=generator))
        samples.append(sample)
    return images, samples


def batch(height: int, width: int, ori_shape: Optional[Tuple[int, int]] = None, seed: int = 0) -> dict:
    """One image as mmseg's test pipeline packs it (uint8 CHW, BGR) with its data sample."""
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=dict(ori_shape=ori_shape or (height, width), img_shape=(height, width)))
    return dict(inputs=[image], data_samples=[sample])


def with_test_cfg(model: torch.nn.Module, test_cfg: dict) -> torch.nn.Module:
    from mmengine.config import ConfigDict
    model.test_cfg = ConfigDict(test_cfg)
    return model


def onnx_segmentor(cfg: Config, onnx_file: Path, test_cfg: Optional[dict] = None, runtime: str = 'onnxruntime',
                   precision: str = 'float32') -> torch.nn.Module:
    """The segmentor running ``onnx_file`` with ``runtime`` in place of the config's model (one thread)."""
    from mmseg_ext.deploy import onnx_model_config
    from mmseg_ext.registry import MODELS
    model_cfg = cfg.model.copy()
    if test_cfg is not None:
        model_cfg.test_cfg = test_cfg
    return MODELS.build(onnx_model_config(model_cfg, str(onnx_file), threads=1, runtime=runtime, precision=precision))


def logits(model: torch.nn.Module, data: dict) -> torch.Tensor:
    """``seg_logits`` of mmseg's ``test_step`` (preprocessing, inference, postprocessing)."""
    import copy
    with torch.no_grad():
        return model.test_step(copy.deepcopy(data))[0].seg_logits.data


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference relative to the range of the expected logits."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float((actual - expected).abs().max() / (expected.max() - expected.min()))
