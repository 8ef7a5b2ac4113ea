"""Benchmark a segmentor: parameters, FLOPs, latency, throughput and peak memory; optionally against
mmseg's own implementation with the same weights, alternating in one process.

Latency is the segmentor's own inference (``model.inference``: whole image, or sliding window with
``--mode slide``, logits resized to the input) under ``torch.inference_mode``. Switches
(``--fuse-conv-bn``, ``--channels-last``, ``--compile``, ``--amp``) apply to the model under test; mmseg's
counterpart runs as mmseg ships it. Without a checkpoint the weights are random and batch norms get
random statistics (speed does not depend on the values).

Examples::

    python tools/benchmark.py configs/erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py \\
        --shape 512 1024 --fuse-conv-bn --channels-last --compare-mmseg
    python tools/benchmark.py configs/segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py \\
        --shape 1024 2048 --mode slide --compare-mmseg --json b0.json
    python tools/benchmark.py configs/segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py \\
        --shape 512 1024 --mode whole --backend onnxruntime --compare-mmseg --threads 2
"""
import argparse
import contextlib
import copy
import json
import platform
import sys
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope
from rich.progress import Progress

import mmseg_ext
from mmseg_ext.benchmarking import peak_memory_mb, randomize_batch_norms, time_alternating, to_mmseg_config
from mmseg_ext.launch import load_run_config
from mmseg_ext.preflight import PreflightError
from mmseg_ext.weights_check import CHECKPOINT_ERRORS, load_weights


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Benchmark a segmentor (optionally against mmseg)')
    parser.add_argument('config', help='model config (path or mmseg::name)')
    parser.add_argument('checkpoint', nargs='?', help='weights to load (random weights if omitted)')
    parser.add_argument('--shape', type=int, nargs=2, default=(512, 1024), metavar=('H', 'W'), help='input size')
    parser.add_argument('--batch', type=int, default=1, help='images per call')
    parser.add_argument('--mode', choices=['whole', 'slide'], help="inference mode (default: the config's)")
    parser.add_argument('--crop', type=int, nargs=2, metavar=('H', 'W'), help='slide window (default: config, '
                        'else 1024 1024)')
    parser.add_argument('--stride', type=int, nargs=2, metavar=('H', 'W'), help='slide stride (default: config, '
                        'else 768 768)')
    parser.add_argument('--repeats', type=int, default=10, help='timed calls per model')
    parser.add_argument('--warmup', type=int, default=2, help='untimed calls per model first')
    parser.add_argument('--fuse-conv-bn', action='store_true', help='fold BN into convs (mmseg_ext.fuse_conv_bn)')
    parser.add_argument('--channels-last', action='store_true', help='channels_last memory format')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model')
    parser.add_argument('--amp', action='store_true', help='autocast: float16 on CUDA, bfloat16 on CPU')
    parser.add_argument('--compare-mmseg', action='store_true',
                        help="also run mmseg's implementation with the same weights and print the ratio")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--no-flops', action='store_true', help='skip counting FLOPs (it traces the model)')
    parser.add_argument('--json', metavar='OUT', help='also write the results as JSON')
    parser.add_argument('--backend', choices=['pytorch', 'onnxruntime'], default='pytorch',
                        help='onnxruntime: also time the model exported to ONNX (conv-BN folded, static shape) in '
                        'onnxruntime (mmseg_ext.deploy), with --threads intra-op threads')
    parser.add_argument('--int8', action='store_true', help='with --backend onnxruntime: quantise the exported '
                        "model to int8, calibrated on the config's train split (needs its data)")
    args = parser.parse_args(argv)
    for name in ('batch', 'repeats'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1, got {getattr(args, name)}')
    if args.warmup < 0:
        parser.error(f'--warmup must not be negative, got {args.warmup}')
    return args


def build_segmentor(model_cfg: dict) -> nn.Module:
    """Build ``model_cfg`` without its ``pretrained`` weights (the benchmark uses random weights or
    CHECKPOINT, and nothing is downloaded). ``model_cfg`` is not modified: mmseg's segmentors move
    ``pretrained`` into the backbone's config while they build."""
    from mmseg.registry import MODELS
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.pop('pretrained', None)
    model_cfg.get('backbone', {}).pop('pretrained', None)
    return MODELS.build(model_cfg)


def configure_inference(model: nn.Module, args: argparse.Namespace) -> str:
    """Set the segmentor's test mode from the command line; returns the mode."""
    test_cfg = ConfigDict(model.test_cfg or {})
    mode = args.mode or test_cfg.get('mode', 'whole')
    test_cfg.mode = mode
    if mode == 'slide':
        test_cfg.crop_size = tuple(args.crop or test_cfg.get('crop_size', (1024, 1024)))
        test_cfg.stride = tuple(args.stride or test_cfg.get('stride', (768, 768)))
    model.test_cfg = test_cfg
    return mode


def window_count(shape: Tuple[int, int], crop: Tuple[int, int], stride: Tuple[int, int]) -> int:
    """Sliding windows mmseg's ``slide_inference`` runs on an input of ``shape``."""
    rows = max(shape[0] - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    cols = max(shape[1] - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    return rows * cols


def count_gflops(model: nn.Module, shape: Tuple[int, int], device: torch.device) -> float:
    """FLOPs (multiply-adds counted once, mmengine's convention) of one network forward at ``shape``."""
    from mmengine.analysis import get_model_complexity_info
    inputs = torch.randn(1, 3, *shape, device=device)
    with torch.no_grad():
        info = get_model_complexity_info(model, inputs=(inputs, ), show_table=False, show_arch=False)
    return info['flops'] / 1e9


def make_runner(model: nn.Module, inputs: torch.Tensor, args: argparse.Namespace) -> Callable[[], torch.Tensor]:
    height, width = inputs.shape[-2:]
    metas = [dict(ori_shape=(height, width), img_shape=(height, width), pad_shape=(height, width),
                  padding_size=[0, 0, 0, 0])] * inputs.shape[0]
    inference = torch.compile(model.inference) if args.compile else model.inference
    device_type = inputs.device.type
    amp = (torch.autocast(device_type, dtype=torch.float16 if device_type == 'cuda' else torch.bfloat16)
           if args.amp else contextlib.nullcontext())

    def run() -> torch.Tensor:
        with torch.inference_mode(), amp:
            return inference(inputs, metas)

    return run


def markdown_table(rows: Dict[str, dict], ratio: Optional[dict]) -> str:
    lines = ['| implementation | params (M) | GFLOPs | median (ms) | p90 (ms) | images/s | peak memory (MB) |',
             '|---|---:|---:|---:|---:|---:|---:|']
    for name, row in rows.items():
        flops = f"{row['gflops']:.1f}" if row['gflops'] is not None else '-'
        lines.append(f"| {name} | {row['params_m']:.2f} | {flops} | {1000 * row['median_s']:.1f} | "
                     f"{1000 * row['p90_s']:.1f} | {row['images_per_s']:.2f} | {row['peak_memory_mb']:.0f} |")
    if ratio:
        lines.append(f"\nspeed-up (mmseg median / mmseg_ext median): {ratio['speedup']:.2f}x; "
                     f"memory ratio (mmseg_ext / mmseg): {ratio['memory_ratio']:.2f}; "
                     f"largest logit difference: {ratio['max_abs_diff']:.2e}")
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        cfg = load_run_config(args.config)
    except PreflightError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = build_segmentor(cfg.model)
    if args.checkpoint:
        try:
            load_weights(model, args.checkpoint, partial_flag=None)
        except CHECKPOINT_ERRORS as error:
            print(f'error: {error}', file=sys.stderr)
            return 2
    else:
        randomize_batch_norms(model)
    model.eval()
    onnxruntime_variant, onnxruntime_ratio = None, None
    if args.backend == 'onnxruntime':
        from mmseg_ext.deploy.bench import ONNXRUNTIME_LABEL, OnnxRuntimeVariant
        mode = args.mode or (model.test_cfg or {}).get('mode', 'whole')
        test_cfg = dict(model.test_cfg or {})
        onnxruntime_variant = OnnxRuntimeVariant(
            model, cfg, mode, tuple(args.shape), tuple(args.crop or test_cfg.get('crop_size', (1024, 1024))),
            tuple(args.stride or test_cfg.get('stride', (768, 768))), threads=torch.get_num_threads(),
            quantize_cfg=cfg if args.int8 else None)
    models: Dict[str, nn.Module] = {}
    if args.compare_mmseg:
        try:
            mmseg_model = build_segmentor(to_mmseg_config(cfg.model.to_dict()))
        except ValueError as error:
            print(f'error: --compare-mmseg: {error}', file=sys.stderr)
            return 2
        mmseg_model.load_state_dict(model.state_dict(), strict=True)
        models['mmseg'] = mmseg_model.eval().to(device)
    gflops_model = model  # FLOPs of the unfused network
    switches = [name for name in ('fuse_conv_bn', 'channels_last', 'compile', 'amp') if getattr(args, name)]
    label = 'mmseg_ext' + (f" ({', '.join(switches)})" if switches else '')
    if args.fuse_conv_bn:
        model = mmseg_ext.fuse_conv_bn(model)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    models = {label: model, **models}

    mode = 'whole'
    for m in models.values():
        mode = configure_inference(m, args)
    inputs = torch.randn(args.batch, 3, *args.shape, device=device)
    runs = {}
    for name, m in models.items():
        x = inputs.contiguous(memory_format=torch.channels_last) if (args.channels_last and m is model) else inputs
        runs[name] = make_runner(m, x, args)
    if onnxruntime_variant is not None:
        runs[ONNXRUNTIME_LABEL] = onnxruntime_variant.runner(inputs)
        models[ONNXRUNTIME_LABEL] = gflops_model

    gflops = None
    if not args.no_flops:
        crop = tuple(model.test_cfg['crop_size']) if mode == 'slide' else tuple(args.shape)
        windows = window_count(tuple(args.shape), crop, tuple(model.test_cfg['stride'])) if mode == 'slide' else 1
        gflops = count_gflops(gflops_model, crop, device) * windows * args.batch

    total = (args.warmup + args.repeats) * len(runs)
    with Progress(transient=True) as progress:
        task = progress.add_task(f'{mode} {args.shape[0]}x{args.shape[1]} x{args.batch}', total=total)
        memory = {name: peak_memory_mb(run, device) for name, run in runs.items()}
        timings = time_alternating(runs, args.repeats, args.warmup, on_step=lambda: progress.advance(task))

    rows = {}
    for name, m in models.items():
        timing = timings[name]
        rows[name] = dict(params_m=sum(p.numel() for p in m.parameters()) / 1e6, gflops=gflops,
                          median_s=timing.median, p90_s=timing.p90, images_per_s=args.batch / timing.median,
                          peak_memory_mb=memory[name], seconds=timing.seconds)
    ratio = None
    if args.compare_mmseg:
        ours, theirs = runs[label]().float(), runs['mmseg']().float()
        ratio = dict(speedup=timings['mmseg'].median / timings[label].median,
                     memory_ratio=memory[label] / max(memory['mmseg'], 1e-9),
                     max_abs_diff=(ours - theirs).abs().max().item())
    if onnxruntime_variant is not None:
        onnxruntime_ratio = OnnxRuntimeVariant.ratios(timings, (label, 'mmseg'))
        if args.compare_mmseg:
            onnxruntime_ratio['max_abs_diff_to_mmseg'] = (runs[ONNXRUNTIME_LABEL]().float() - theirs).abs().max().item()
    header = (f'{args.config} | {mode} {args.shape[0]}x{args.shape[1]}, batch {args.batch} | {device.type}, '
              f'{torch.get_num_threads()} threads | torch {torch.__version__} | {platform.processor() or platform.machine()}')
    print(header)
    print(markdown_table(rows, ratio))
    if onnxruntime_variant is not None:
        print('; '.join(f'{key}: {value:.3g}' for key, value in onnxruntime_ratio.items()))
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(dict(config=args.config, checkpoint=args.checkpoint, mode=mode, shape=list(args.shape),
                           batch=args.batch, device=device.type, threads=torch.get_num_threads(),
                           torch=torch.__version__, repeats=args.repeats, warmup=args.warmup, results=rows,
                           comparison=ratio, onnxruntime=onnxruntime_ratio), file, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
