"""Benchmark a segmentor: parameters, FLOPs, latency, throughput and peak memory of several paths
("variants") of the same network with the same weights, timed side by side in one process.

Variants (``--variants``, names joined from steps by ``+``; see ``mmseg_ext.benchmark.variants``):
``mmseg`` (mmseg's own implementation of the config's network), ``configured`` (the plugin's model as
configured), ``folded`` (BN folded into the convolutions by ``mmseg_ext.fuse_conv_bn``), ``channels-last``,
``compiled`` (``torch.compile`` of backbone and heads), ``amp`` (autocast), ``onnxruntime`` and
``onnxruntime-int8`` (the network exported to ONNX, folded, run by ONNX Runtime in the config's test mode:
:mod:`mmseg_ext.benchmark.runtimes`), ``openvino`` and ``openvino-bf16`` (the same file run by OpenVINO), e.g.
``--variants mmseg configured folded+channels-last onnxruntime`` (default: ``configured``). The first
variant is the baseline of the speed-up column.

Tasks (``--task``): ``inference`` times the network's forward (``_forward``: backbone and heads, under
``torch.inference_mode``) for ``--mode whole``, and the segmentor's sliding-window ``inference`` for
``--mode slide``; ``train-step`` times forward, losses, backward and the config's optimizer step on a batch
with random labels, in train mode. Peak memory is what one call adds to the process.

Allocator (``--allocator``): ``default`` (glibc as it starts), ``tuned`` (glibc keeps freed memory, see
``mmseg_ext.benchmark.allocator``) or ``both``, each in a fresh child process (glibc reads these
settings at start-up). ``train-step`` runs ``both`` unless told otherwise.

FLOPs are counted on one forward by the papers' convention: one multiply-add is one FLOP, attention
products included (``mmseg_ext.benchmark.flops``).

The roof (``mmseg_ext.benchmark.roofline``): on the CPU the run also measures the machine's dense rate per precision
(float32, bf16, int8; the better of a matrix product and a 3x3 convolution, with the run's threads), and
every inference row reports its achieved GMAC/s (its multiply-adds per call over its median time) and its
share of its precision's roof (JSON ``achieved_gmacs`` and ``roof_fraction``; the roof itself under
``roof``). ``--no-roof`` skips it.

Examples::

    python tools/analysis_tools/benchmark.py configs/ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py \\
        --variants mmseg folded+channels-last compiled --json ocr.json
    python tools/analysis_tools/benchmark.py configs/segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py \\
        --task train-step --shape 512 512 --variants mmseg configured
    python tools/analysis_tools/benchmark.py configs/erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py \\
        --variants mmseg folded+channels-last
    python tools/analysis_tools/benchmark.py configs/segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py \\
        --shape 512 1024 --mode whole --variants mmseg configured onnxruntime --threads 2
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope

from mmseg_ext.benchmark import (ALLOCATORS, FLOP_CONVENTION, VariantContext, allocator_environment, build_variant,
                                 count_flops, current_allocator, inference_runner, max_difference, median,
                                 parse_variant, peak_memory_mb, randomize_batch_norms, ratio_summary, time_alternating,
                                 train_step_runner)
from mmseg_ext.benchmark.roofline import annotate_rows, measure_roof
from mmseg_ext.benchmark.roofline import summary as roof_summary
from mmseg_ext.builder import build_segmentor
from mmseg_ext.checkpoint.weights_check import CHECKPOINT_ERRORS, load_weights
from mmseg_ext.deploy import slide_windows
from mmseg_ext.launch import load_run_config
from mmseg_ext.preflight import PreflightError

TASKS = ('inference', 'train-step')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Benchmark a segmentor (optionally against mmseg)')
    parser.add_argument('config', help='model config (path or mmseg::name)')
    parser.add_argument('checkpoint', nargs='?', help='weights to load (random weights if omitted)')
    parser.add_argument('--task', choices=TASKS, default='inference', help='what one timed call does')
    parser.add_argument('--variants', nargs='+', metavar='VARIANT', default=['configured'],
                        help="paths to time side by side, e.g. mmseg configured folded+channels-last compiled "
                        "(the first is the baseline; default: configured)")
    parser.add_argument('--shape', type=int, nargs=2, default=(512, 1024), metavar=('H', 'W'), help='input size')
    parser.add_argument('--batch', type=int, default=1, help='images per call')
    parser.add_argument('--mode', choices=['whole', 'slide'], help="inference mode (default: the config's)")
    parser.add_argument('--crop', type=int, nargs=2, metavar=('H', 'W'), help='slide window (default: config, '
                        'else 1024 1024)')
    parser.add_argument('--stride', type=int, nargs=2, metavar=('H', 'W'), help='slide stride (default: config, '
                        'else 768 768)')
    parser.add_argument('--repeats', type=int, default=10, help='timed calls per variant')
    parser.add_argument('--warmup', type=int, default=2, help='untimed calls per variant first')
    parser.add_argument('--allocator', choices=list(ALLOCATORS) + ['both'],
                        help='glibc malloc settings, each in a fresh process (default: both for train-step, '
                        'else default)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--no-flops', action='store_true', help='skip counting FLOPs (it traces the model)')
    parser.add_argument('--no-roof', action='store_true',
                        help="skip measuring the CPU's dense rate per precision (mmseg_ext.benchmark.roofline)")
    parser.add_argument('--json', metavar='OUT', help='also write the results as JSON')
    args = parser.parse_args(argv)
    for name in ('batch', 'repeats'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1, got {getattr(args, name)}')
    if args.warmup < 0:
        parser.error(f'--warmup must not be negative, got {args.warmup}')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be at least 1, got {args.threads}')
    check_variants(args.variants, parser)
    if args.allocator is None:
        args.allocator = 'both' if args.task == 'train-step' else 'default'
    return args


def check_variants(variants: List[str], parser: argparse.ArgumentParser) -> None:
    """Refuse a ``--variants`` list naming a variant twice or an unknown step, in one line."""
    duplicates = sorted({name for name in variants if variants.count(name) > 1})
    if duplicates:
        parser.error(f'--variants names {duplicates} more than once')
    for name in variants:
        try:
            parse_variant(name)
        except ValueError as error:
            parser.error(str(error))


def configure_test_mode(model: torch.nn.Module, args: argparse.Namespace) -> str:
    """Set the segmentor's test mode from the command line; returns the mode."""
    test_cfg = ConfigDict(model.test_cfg or {})
    mode = args.mode or test_cfg.get('mode', 'whole')
    test_cfg.mode = mode
    if mode == 'slide':
        test_cfg.crop_size = tuple(args.crop or test_cfg.get('crop_size', (1024, 1024)))
        test_cfg.stride = tuple(args.stride or test_cfg.get('stride', (768, 768)))
    model.test_cfg = test_cfg
    return mode


def network_gflops(context: VariantContext, variants: List[str], args: argparse.Namespace,
                   mode: str) -> Dict[str, dict]:
    """FLOPs of one network forward, of the plugin's configured model and (if timed) mmseg's; per input
    (batch and sliding windows included)."""
    test_cfg = context.plugin.test_cfg
    crop = tuple(test_cfg['crop_size']) if mode == 'slide' else tuple(args.shape)
    windows = len(list(slide_windows(*args.shape, crop, test_cfg['stride']))) if mode == 'slide' else 1
    images = torch.randn(1, 3, *crop, device=context.device)
    models = {'configured': context.plugin}
    if any(parse_variant(name)[0] == 'mmseg' for name in variants):
        models['mmseg'] = context.mmseg_counterpart()
    counts = {}
    for name, model in models.items():
        flops = count_flops(model, images)
        counts[name] = dict(gflops=flops.gflops * windows * args.batch, by_operator=flops.by_operator,
                            not_counted=flops.not_counted)
    return counts


def machine_roof(args: argparse.Namespace, device: torch.device) -> Optional[dict]:
    """The CPU's dense rate per precision with the run's threads (:func:`mmseg_ext.benchmark.roofline.measure_roof`);
    None with ``--no-roof`` or on another device."""
    if args.no_roof or device.type != 'cpu':
        return None
    print(f'[benchmark] roof: dense rate per precision, {torch.get_num_threads()} threads', file=sys.stderr,
          flush=True)
    return measure_roof()


def measure(args: argparse.Namespace) -> dict:
    """Build the variants, time them alternating and measure their memory, in this process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_run_config(args.config)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = build_segmentor(cfg.model)
    if args.checkpoint:
        load_weights(model, args.checkpoint, partial_flag=None)
    else:
        randomize_batch_norms(model)
    mode = configure_test_mode(model.eval().to(device), args)
    context = VariantContext(plugin=model, model_cfg=cfg.model.to_dict(), device=device, cfg=cfg,
                             input_shape=tuple(args.shape))
    subjects = {}
    for name in args.variants:
        subject = build_variant(name, context)
        if subject.module is not None:
            configure_test_mode(subject.module, args)
        subjects[name] = subject
    flops = None if args.no_flops else network_gflops(context, args.variants, args, mode)

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, *args.shape, generator=generator).to(device)
    if args.task == 'inference':
        runs = {name: inference_runner(subject, images, whole_network_only=mode == 'whole')
                for name, subject in subjects.items()}
    else:
        num_classes = _num_classes(model)
        labels = torch.randint(0, num_classes, (args.batch, *args.shape), generator=generator).to(device)
        optim_cfg = cfg.get('optim_wrapper') or dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01))
        runs = {name: train_step_runner(subject, images, labels, optim_cfg) for name, subject in subjects.items()}

    allocator = current_allocator() or 'custom (MALLOC_* set in the environment)'
    rounds = args.warmup + args.repeats

    calls = 0

    def progress() -> None:
        """A line per round (every variant called once)."""
        nonlocal calls
        calls += 1
        if calls % len(runs) == 0:
            done = calls // len(runs)
            stage = 'warm-up' if done <= args.warmup else 'timed'
            print(f'[benchmark] {args.task}, {allocator} allocator: round {done}/{rounds} ({stage})',
                  file=sys.stderr, flush=True)

    roof = machine_roof(args, device)  # right before the variants, under the same conditions
    timings = time_alternating(runs, args.repeats, args.warmup, on_step=progress)
    memory = {name: peak_memory_mb(run, device) for name, run in runs.items()}
    baseline = args.variants[0]
    speedups = ratio_summary(timings, baseline)
    differences = max_difference({name: run() for name, run in runs.items()}, baseline) \
        if args.task == 'inference' else {}
    results = {}
    for name, subject in subjects.items():
        timing = timings[name]
        base = parse_variant(name)[0]
        params = subject.module if subject.module is not None else model
        results[name] = dict(
            params_m=sum(p.numel() for p in params.parameters()) / 1e6,
            gflops=flops[base if base in flops else 'configured']['gflops'] if flops else None,
            median_s=timing.median, p90_s=timing.p90, images_per_s=args.batch / timing.median,
            seconds=timing.seconds, warmup_seconds=timing.warmup_seconds,
            user_s=median(timing.user_seconds), system_s=median(timing.system_seconds),
            peak_memory_mb=memory[name], speedup=speedups[name],
            memory_ratio=memory[name] / max(memory[baseline], 1e-9), max_abs_diff=differences.get(name),
            **subject.row_fields)
    return dict(allocator=allocator, baseline=baseline, results=results, flops=flops, mode=mode,
                threads=torch.get_num_threads(), roof=roof)


def _num_classes(model: torch.nn.Module) -> int:
    head = model.decode_head[-1] if isinstance(model.decode_head, torch.nn.ModuleList) else model.decode_head
    return head.num_classes


def run_in_child(argv: List[str], allocator: str) -> dict:
    """Run this tool for one allocator condition in a fresh process (glibc reads MALLOC_* at start-up)."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, 'result.json')
        command = [sys.executable, os.path.abspath(__file__), *argv, '--allocator', allocator, '--json', out]
        subprocess.run(command, env=allocator_environment(allocator), check=True)
        with open(out) as file:
            result = json.load(file)
        return dict(result['conditions'][0], roof=result.get('roof'))


def strip_options(argv: List[str], options: Tuple[str, ...]) -> List[str]:
    """``argv`` without the given single-value options (``--opt VALUE`` and ``--opt=VALUE``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not any(arg.startswith(option + '=') for option in options):
            kept.append(arg)
    return kept


def markdown_table(condition: dict) -> str:
    lines = ['| variant | params (M) | GFLOPs | median (ms) | p90 (ms) | images/s | speed-up | GMAC/s | % of roof | '
             'peak memory (MB) | max abs diff |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for name, row in condition['results'].items():
        if row.get('calibration'):
            name = f"{name} (calibrated on {row['calibration']})"
        flops = f"{row['gflops']:.1f}" if row['gflops'] is not None else '-'
        diff = f"{row['max_abs_diff']:.1e}" if row['max_abs_diff'] is not None else '-'
        rate = f"{row['achieved_gmacs']:.1f}" if row.get('achieved_gmacs') is not None else '-'
        share = f"{100 * row['roof_fraction']:.1f}% {row['precision']}" if row.get('roof_fraction') is not None else '-'
        lines.append(f"| {name} | {row['params_m']:.2f} | {flops} | {1000 * row['median_s']:.1f} | "
                     f"{1000 * row['p90_s']:.1f} | {row['images_per_s']:.2f} | {row['speedup']:.2f}x | {rate} | "
                     f"{share} | {row['peak_memory_mb']:.0f} | {diff} |")
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        load_run_config(args.config)
    except PreflightError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    conditions = list(ALLOCATORS) if args.allocator == 'both' else [args.allocator]
    try:
        if conditions == [current_allocator()]:
            results = [measure(args)]
        else:
            child_argv = strip_options(argv, ('--allocator', '--json'))
            # FLOPs and the roof do not depend on the allocator: measured in the first process only.
            results = [run_in_child(child_argv + (['--no-flops', '--no-roof'] if index else []), name)
                       for index, name in enumerate(conditions)]
            for later in results[1:]:
                later['flops'] = results[0]['flops']
                for name, row in later['results'].items():
                    row['gflops'] = results[0]['results'][name]['gflops']
    except (ValueError, *CHECKPOINT_ERRORS) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        return error.returncode or 1
    roof = results[0].pop('roof')
    for condition in results:
        condition.pop('roof', None)
        annotate_rows(condition, roof, args.task)
    header = (f'{args.config} | {args.task} | {results[0]["mode"]} {args.shape[0]}x{args.shape[1]}, batch '
              f'{args.batch} | {args.device}, {results[0]["threads"]} threads | torch {torch.__version__} | '
              f'{platform.processor() or platform.machine()}')
    print(header)
    for condition in results:
        print(f"\nallocator: {condition['allocator']}; speed-up and diff against {condition['baseline']}")
        print(markdown_table(condition))
    if results[0]['flops']:
        print(f'\nGFLOPs: {FLOP_CONVENTION}.')
    if roof:
        print(f"\nroof, GMAC/s with {roof['threads']} threads, each kernel the best of at least {roof['calls']} calls "
              f"and {roof['min_seconds']} s (mmseg_ext.benchmark.roofline):")
        print('\n'.join(roof_summary(roof)))
    else:
        print('\nroof: not measured (' + ('--no-roof' if args.no_roof else f'it is measured on the CPU only, not '
                                          f'{args.device}') + ')')
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(dict(config=args.config, checkpoint=args.checkpoint, task=args.task, shape=list(args.shape),
                           batch=args.batch, device=args.device, torch=torch.__version__, repeats=args.repeats,
                           warmup=args.warmup, variants=args.variants, flop_convention=FLOP_CONVENTION,
                           roof=roof, conditions=results), file, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
