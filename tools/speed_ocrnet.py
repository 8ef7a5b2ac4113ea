"""Inference speed of OCRNet-HRNetV2p-W18: mmseg as it ships vs. the plugin's eager paths.

All models are built in one process from mmseg's config
``mmseg::ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py`` (SyncBN reverted to BN for one CPU
process) and carry the same weights with randomised BN statistics. Variants:

* ``mmseg``: mmseg's OCRNet as shipped (NCHW, BN not folded) -- the baseline;
* ``plugin``: the same weights in the plugin's model (``mmseg_ext.HRNet`` + ``mmseg_ext.OCRHead``);
* ``plugin-folded``: plus :func:`mmseg_ext.fuse_conv_bn`;
* ``plugin-folded-cl``: plus channels_last memory format (the plugin's fastest eager path).

Timed call: ``model.encode_decode(image, metas)`` under ``torch.inference_mode()`` (backbone, both
heads and the resize to the input size; no data loading or pre-processing). Variants run in turn,
round after round, so that load changes on a shared machine hit all of them alike; the script prints
per-variant medians and the ratios to the baseline, and checks that all variants agree.

Usage::

    python tools/speed_ocrnet.py                       # 512x1024, 2 warm-up + 7 timed rounds
    python tools/speed_ocrnet.py --height 256 --width 512 --rounds 3 --threads 2
"""
import argparse
import copy
import os.path as osp
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope

import mmseg
import mmseg_ext  # noqa: F401  (plugin registry)
from mmseg.registry import MODELS
from mmseg_ext.folding import fuse_conv_bn

MMSEG_CONFIG = 'ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py'


def mmseg_config(relative: str) -> Config:
    """Load one of mmseg's bundled configs (the file ``mmseg::<relative>`` names)."""
    path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs', relative)
    if not osp.isfile(path):
        raise FileNotFoundError(f'mmseg config {relative!r} not found at {path}')
    return Config.fromfile(path)


def randomise_weights(model: nn.Module, seed: int = 0) -> None:
    """He-normal convs and non-trivial BN statistics, scaled so that the logits stay O(1).

    Folding then has real statistics to fold, and agreement between variants is checked at a
    meaningful scale (random init followed by random BN statistics otherwise lets activations grow
    through HRNet's residual stages).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                channels = module.num_features
                module.weight.copy_(0.3 + 0.5 * torch.rand(channels, generator=generator))
                module.bias.copy_(0.1 * torch.randn(channels, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(channels, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
            elif isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in)**0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))


def build_models() -> Dict[str, nn.Module]:
    """mmseg's OCRNet-HR18 and the plugin's variants, all with the same weights, in eval mode."""
    init_default_scope('mmseg')
    model_cfg = mmseg_config(MMSEG_CONFIG).model
    model_cfg.pretrained = None  # no download; the weights are random and shared below
    reference = revert_sync_batchnorm(MODELS.build(model_cfg))
    randomise_weights(reference)
    reference.eval()

    plugin_cfg = copy.deepcopy(model_cfg)
    plugin_cfg.backbone.type = 'mmseg_ext.HRNet'
    plugin_cfg.decode_head[1].type = 'mmseg_ext.OCRHead'
    plugin = revert_sync_batchnorm(MODELS.build(plugin_cfg))
    plugin.load_state_dict(reference.state_dict(), strict=True)
    plugin.eval()

    folded = fuse_conv_bn(copy.deepcopy(plugin))
    folded_cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    return {'mmseg': reference, 'plugin': plugin, 'plugin-folded': folded, 'plugin-folded-cl': folded_cl}


def make_runner(name: str, model: nn.Module, image: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A zero-argument call that runs one inference of ``model``."""
    inputs = image.contiguous(memory_format=torch.channels_last) if name.endswith('-cl') else image
    metas = [dict(img_shape=tuple(image.shape[2:]), ori_shape=tuple(image.shape[2:]))] * image.shape[0]

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model.encode_decode(inputs, metas)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--height', type=int, default=512)
    parser.add_argument('--width', type=int, default=1024)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    parser.add_argument('--rounds', type=int, default=7, help='timed rounds (each runs every variant once)')
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s)')
    args = parser.parse_args()
    for name in ('height', 'width', 'batch', 'rounds'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be positive, got {getattr(args, name)}')
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    models = build_models()
    image = torch.randn(args.batch, 3, args.height, args.width, generator=torch.Generator().manual_seed(1))
    runners = {name: make_runner(name, model, image) for name, model in models.items()}

    outputs = {name: run() for name, run in runners.items()}
    baseline = outputs['mmseg']
    print(f'max |logit| of mmseg: {baseline.abs().max().item():.2f}')
    for name, output in outputs.items():
        error = (output.float() - baseline).abs().max().item()
        print(f'{name:>18}: max |logit - mmseg| = {error:.2e}')
        if error > 1e-3 * max(1.0, baseline.abs().max().item()):
            sys.exit(f'{name} disagrees with mmseg ({error:.3e}); timings would be meaningless')

    wall: Dict[str, List[float]] = {name: [] for name in runners}
    cpu: Dict[str, List[float]] = {name: [] for name in runners}
    for round_index in range(args.warmup + args.rounds):
        order = list(runners) if round_index % 2 == 0 else list(reversed(list(runners)))
        for name in order:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            runners[name]()
            elapsed_wall, elapsed_cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
            if round_index >= args.warmup:
                wall[name].append(elapsed_wall)
                cpu[name].append(elapsed_cpu)

    base_wall, base_cpu = statistics.median(wall['mmseg']), statistics.median(cpu['mmseg'])
    print(f'\nOCRNet-HR18, input {args.batch}x3x{args.height}x{args.width}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, {args.rounds} rounds after {args.warmup} warm-up')
    print('Medians per inference; "CPU" is the process CPU time (with 1 thread, immune to time-slicing by '
          'other processes).')
    print(f"{'variant':>18} | {'wall s':>7} | {'CPU s':>7} | {'speed-up (wall)':>15} | {'speed-up (CPU)':>14}")
    for name in runners:
        median_wall, median_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f'{name:>18} | {median_wall:7.3f} | {median_cpu:7.3f} | {base_wall / median_wall:14.2f}x | '
              f'{base_cpu / median_cpu:13.2f}x')

if __name__ == '__main__':
    main()
