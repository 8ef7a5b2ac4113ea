"""Time mmseg's ERFNet+FCN against the plugin's ERFNet paths, side by side in one process.

Builds mmseg's model from the config mmseg ships (``mmseg::erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py``),
gives its batch norms non-trivial statistics, loads the same weights into the plugin's model
(``configs/erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py``) and times ``encode_decode`` (the
network plus the resize of the logits to the input size) in eval mode under ``torch.inference_mode``.
The variants run in turn, in a rotating order, ``--repeats`` times; medians and speed-ups relative to
mmseg are printed as a Markdown table, with each variant's largest logit difference from mmseg's.

Example (the figures in docs/erfnet.md)::

    python tools/speed_erfnet.py --height 512 --width 1024 --repeats 15 --threads 1
"""
import argparse
import copy
import os.path as osp
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MMSEG_CONFIG = 'erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py'
PLUGIN_CONFIG = osp.join(REPO_ROOT, 'configs', 'erfnet', 'erfnet_fcn_4xb4-160k_cityscapes-512x1024.py')


def time_alternating(runs: Dict[str, Callable[[], object]], repeats: int, warmup: int) -> Dict[str, List[float]]:
    """Seconds per call of each callable, calling them in turn (rotating the order every round).

    Alternating keeps slow drifts of a shared machine from favouring whichever variant runs last.
    """
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    seconds: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial batch-norm statistics, so folding has real work to do."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def build_models() -> Dict[str, nn.Module]:
    """mmseg's ERFNet+FCN as shipped, and the plugin's model (same head) holding the same weights."""
    import mmseg
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    mmseg_cfg = Config.fromfile(osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs', MMSEG_CONFIG))
    reference = MODELS.build(mmseg_cfg.model)  # PyTorch's default initialisation
    randomize_batch_norms(reference)
    plugin = MODELS.build(Config.fromfile(PLUGIN_CONFIG).model)
    plugin.load_state_dict(reference.state_dict(), strict=True)
    return {'mmseg': reference.eval(), 'plugin': plugin.eval()}


def make_variants(height: int, width: int, batch: int) -> Dict[str, Callable[[], torch.Tensor]]:
    """The timed callables, all fed the same NCHW batch (what mmseg's data preprocessor produces).

    mmseg as shipped; the plugin's default path (its backbone computes channels-last on CPU and
    returns NCHW features); folded by :func:`mmseg_ext.fuse_conv_bn`; folded with
    ``backbone.channels_last = True`` and channels-last weights, so the head runs NHWC too.
    """
    from mmseg_ext.folding import fuse_conv_bn

    models = build_models()
    folded = fuse_conv_bn(copy.deepcopy(models['plugin']))
    folded_channels_last = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    folded_channels_last.backbone.channels_last = True  # features stay NHWC through the head
    inputs = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    metas = [dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width))] * batch

    def run(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:

        def call() -> torch.Tensor:
            with torch.inference_mode():
                return model.encode_decode(x, metas)

        return call

    return {
        'mmseg ERFNet+FCN (as shipped)': run(models['mmseg'], inputs),
        'plugin ERFNet+FCN (default)': run(models['plugin'], inputs),
        'plugin, folded': run(folded, inputs),
        'plugin, folded + channels_last': run(folded_channels_last, inputs),
    }


def report(seconds: Dict[str, List[float]], differences: Dict[str, float], baseline: str) -> str:
    """A Markdown table of medians, speed-ups over ``baseline`` and logit differences."""
    base = statistics.median(seconds[baseline])
    lines = ['| variant | median ms | min ms | speed-up vs mmseg | max abs logit diff vs mmseg |',
             '| --- | ---: | ---: | ---: | ---: |']
    for name, values in seconds.items():
        median = statistics.median(values)
        lines.append(f'| {name} | {median * 1e3:.0f} | {min(values) * 1e3:.0f} | {base / median:.2f}x | '
                     f'{differences[name]:.1e} |')
    return '\n'.join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--height', type=int, default=512)
    parser.add_argument('--width', type=int, default=1024)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=15, help='timed calls per variant')
    parser.add_argument('--warmup', type=int, default=2, help='untimed calls per variant first')
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    variants = make_variants(args.height, args.width, args.batch)
    outputs = {name: run() for name, run in variants.items()}
    baseline = next(iter(variants))
    differences = {name: float((out - outputs[baseline]).abs().max()) for name, out in outputs.items()}
    seconds = time_alternating(variants, args.repeats, args.warmup)
    print(f'input {args.batch}x3x{args.height}x{args.width}, {args.repeats} timed runs per variant after '
          f'{args.warmup} warm-up, {torch.get_num_threads()} thread(s), torch {torch.__version__}, '
          f'{platform.processor() or platform.machine()}')
    print(report(seconds, differences, baseline))
    return 0


if __name__ == '__main__':
    sys.exit(main())
