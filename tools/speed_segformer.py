"""Side-by-side speed and memory of mmseg's MixVisionTransformer and mmseg_ext's, with the same weights.

Both encoders are built in this process (mmseg's own class, then the plugin's with mmseg's state dict
loaded strictly) and checked to give the same features. Then, alternating which goes first:

* inference: one forward pass in eval mode under ``torch.no_grad()``;
* training step: forward and backward in train mode (loss: mean of squares of every output);

each repeated ``--repeats`` times after a warm-up (``mmseg_ext.benchmarking.time_alternating``); the
medians of the wall time and their ratio are printed, and the medians of the process's user and system
CPU time per call (system time is mostly paging in freshly allocated memory).

Peak memory of the training step is measured in a fresh subprocess per measurement (two per encoder by
default): the worker builds the encoder, runs one warm-up training step (so gradients and one-time
buffers exist), then ``mmseg_ext.benchmarking.peak_memory_mb`` resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), reads its RSS, runs one more step and reports ``VmHWM`` minus that RSS: the
extra resident memory the step needs. The worker
runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed tensors to the system instead of
keeping them for reuse, which would hide part of the peak. Linux only.

Example (the figures in docs/segformer.md)::

    .venv/bin/python tools/speed_segformer.py --arch b2 --size 1024 1024 --repeats 5
"""
import argparse
import functools
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from mmseg_ext.benchmarking import peak_memory_mb, time_alternating  # noqa: E402

IMPLEMENTATIONS = ('mmseg', 'mmseg_ext')


def build_encoder(implementation: str, arch: str, seed: int = 0) -> nn.Module:
    """mmseg's or the plugin's MiT ``arch`` with weights drawn from ``seed`` (mmseg's initialisation)."""
    from mmseg.models.backbones import MixVisionTransformer as MmsegMiT

    import mmseg_ext.models  # noqa: F401
    from mmseg_ext.models.backbones.mit import MIT_ARCH_SETTINGS
    from mmseg_ext.models.backbones.mit import MixVisionTransformer as PluginMiT
    torch.manual_seed(seed)
    reference = MmsegMiT(**MIT_ARCH_SETTINGS[arch])
    reference.init_weights()
    if implementation == 'mmseg':
        return reference
    if implementation != 'mmseg_ext':
        raise ValueError(f'implementation={implementation!r}; choose one of {IMPLEMENTATIONS}')
    plugin = PluginMiT(arch=arch)
    plugin.load_state_dict(reference.state_dict(), strict=True)
    return plugin


def train_step(model: nn.Module, images: torch.Tensor) -> None:
    """Forward and backward with the mean of squares of every output as the loss."""
    model.zero_grad(set_to_none=False)
    outputs = model(images)
    loss = sum(output.pow(2).mean() for output in outputs)
    loss.backward()


def inference(model: nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        model(images)


def memory_worker(implementation: str, arch: str, size: Tuple[int, int]) -> Dict[str, float]:
    """Extra peak RSS (MiB) of one training step, measured inside this (fresh) process."""
    model = build_encoder(implementation, arch).train()
    images = torch.randn(1, 3, *size)
    train_step(model, images)  # warm-up: gradients and one-time buffers now exist
    return dict(extra_peak_mib=peak_memory_mb(lambda: train_step(model, images), torch.device('cpu')))


def measure_memory(implementation: str, arch: str, size: Tuple[int, int]) -> Dict[str, float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', MALLOC_TRIM_THRESHOLD_='0')
    command = [sys.executable, osp.abspath(__file__), '--memory-worker', implementation, '--arch', arch,
               '--size', str(size[0]), str(size[1])]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='b2', choices=['b0', 'b1', 'b2', 'b3', 'b4', 'b5'])
    parser.add_argument('--size', type=int, nargs=2, default=(1024, 1024), metavar=('H', 'W'))
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per encoder and mode')
    parser.add_argument('--memory-repeats', type=int, default=2, help='fresh processes per encoder')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    parser.add_argument('--skip-inference', action='store_true', help='do not time inference')
    parser.add_argument('--skip-train', action='store_true', help='do not time the training step')
    parser.add_argument('--skip-memory', action='store_true', help='do not measure peak memory')
    parser.add_argument('--memory-worker', choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(args.size)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.arch, size)))
        return

    models = {name: build_encoder(name, args.arch) for name in IMPLEMENTATIONS}
    images = torch.randn(1, 3, *size)
    for model in models.values():
        model.eval()
    with torch.no_grad():
        reference, plugin = (models[name](images) for name in IMPLEMENTATIONS)
    max_diff = max((a - b).abs().max().item() for a, b in zip(reference, plugin))
    print(f'MiT-{args.arch.upper()} at {size[0]}x{size[1]}, batch 1, {torch.get_num_threads()} threads, '
          f'torch {torch.__version__}; max |mmseg - mmseg_ext| of the features: {max_diff:.2e}')

    def report(title: str, step: Callable[[nn.Module, torch.Tensor], None]) -> None:
        timings = time_alternating({name: functools.partial(step, model, images) for name, model in models.items()},
                                   repeats=args.repeats, warmup=1)
        medians = {name: timing.median for name, timing in timings.items()}
        runs = ', '.join(f'{name} ' + ' '.join(f'{value:.2f}' for value in timing.seconds)
                         for name, timing in timings.items())
        cpu = ', '.join(f'{name} {statistics.median(timing.user_seconds):.2f} s user + '
                        f'{statistics.median(timing.system_seconds):.2f} s system' for name, timing in timings.items())
        print(f'{title}: mmseg {medians["mmseg"]:.2f} s, mmseg_ext {medians["mmseg_ext"]:.2f} s, '
              f'speed-up {medians["mmseg"] / medians["mmseg_ext"]:.2f}x (median of {args.repeats}; {runs}); '
              f'CPU time per call (medians): {cpu}', flush=True)

    if not args.skip_inference:
        report('inference', inference)
    if not args.skip_train:
        for model in models.values():
            model.train()
        report('train step', train_step)
    del models, reference, plugin
    if not args.skip_memory:
        peaks: Dict[str, List[float]] = {name: [] for name in IMPLEMENTATIONS}
        for repeat in range(args.memory_repeats):
            for name in (IMPLEMENTATIONS if repeat % 2 == 0 else IMPLEMENTATIONS[::-1]):
                peaks[name].append(measure_memory(name, args.arch, size)['extra_peak_mib'])
        medians = {name: statistics.median(values) for name, values in peaks.items()}
        print(f'train step extra peak RSS: mmseg {medians["mmseg"]:.0f} MiB, mmseg_ext {medians["mmseg_ext"]:.0f} MiB, '
              f'ratio {medians["mmseg_ext"] / medians["mmseg"]:.2f} (median of {args.memory_repeats} fresh '
              f'processes each; {peaks})', flush=True)


if __name__ == '__main__':
    main()
