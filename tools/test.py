"""Test (and evaluate) a segmentor checkpoint with mmengine's runner and mmseg's evaluators.

Flags and flow follow mmseg 1.x's ``tools/test.py``, plus ``--fuse-conv-bn`` (fold BN into convs
before testing, :func:`mmseg_ext.fuse_conv_bn`), ``--precision bf16`` (:mod:`mmseg_ext.precision`) and
checks of the data root and checkpoint before the runner starts: a file that is not a checkpoint, is
damaged or unsafe, or whose weights do not fit the config's model stops the run with one line
(:mod:`mmseg_ext.checkpoint.weights_check`) instead of evaluating a partly random model; ``--allow-partial-weights``
evaluates with the tensors that fit.

Examples::

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --show-dir vis --out preds --fuse-conv-bn
    python tools/test.py CONFIG CHECKPOINT --precision bf16
    python tools/test.py CONFIG MODEL.onnx      # a file from tools/deployment/export_onnx.py, run by onnxruntime
    python tools/test.py CONFIG MODEL.onnx --runtime openvino
    bash tools/dist_test.sh CONFIG CHECKPOINT 2
"""
import argparse
import numbers
import os
import os.path as osp
import statistics
import sys
import time
from typing import List, Optional

# Before torch starts its OpenMP runtime: waiting threads sleep instead of spinning, so this job and another
# process on the same cores do not stall each other (an explicit setting in the environment wins).
if 'OMP_WAIT_POLICY' not in os.environ and 'GOMP_SPINCOUNT' not in os.environ:
    os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'

import torch
from mmengine.config import Config, DictAction
from mmengine.device import get_device
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import Runner

import mmseg_ext  # noqa: F401  (safe checkpoint loading, plugin registry)
from mmseg_ext.checkpoint.reading import read_checkpoint_file
from mmseg_ext.checkpoint.weights_check import CHECKPOINT_ERRORS, apply_weights, log_weights_summary
from mmseg_ext.compat import start_cpu_process_group
from mmseg_ext.deploy import RUNTIMES, DeployError, check_runtime_choice, is_onnx_file, use_onnx_model
from mmseg_ext.launch import load_run_config
from mmseg_ext.precision import PRECISIONS, PrecisionError, check_precision, enable_bf16_inference
from mmseg_ext.preflight import PreflightError, check_datasets


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint',
                        help='checkpoint file, or an .onnx file written by tools/deployment/export_onnx.py')
    parser.add_argument('--runtime', choices=RUNTIMES,
                        help='the runtime of an .onnx file (default: onnxruntime); not for a PyTorch checkpoint')
    parser.add_argument('--work-dir', help='directory for logs and the evaluation results (json)')
    parser.add_argument('--out', help='directory to save the predicted label maps for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results in a window')
    parser.add_argument('--show-dir', help='directory for painted prediction overlays of every test image '
                        '(mmseg\'s visualizer); a relative path is taken inside the work dir')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of --show (s)')
    parser.add_argument('--cityscapes-format', metavar='DIR',
                        help='only write predictions as Cityscapes labelId PNGs (for the test server) into DIR, '
                        'through mmseg\'s CityscapesMetric with format_only; no scores')
    parser.add_argument('--fuse-conv-bn', action='store_true',
                        help='fold BatchNorm into the preceding convolutions before testing (faster, same maths)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the network (backbone, heads and the resize to the input) before '
                        'testing; compiling takes a while before the first image')
    parser.add_argument('--precision', choices=PRECISIONS, default='float32',
                        help='numeric precision: for a checkpoint, bf16 folds BN, stores the weights in bfloat16 and '
                        'runs under bf16 autocast; for an .onnx file, bf16 needs --runtime openvino (both need '
                        'AVX512_BF16 or AMX on CPU)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, e.g. test_dataloader.dataset.data_root=data/cityscapes')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (the config\'s tta_pipeline)')
    parser.add_argument('--no-preflight', action='store_true', help='skip checking the data root and files')
    parser.add_argument('--allow-partial-weights', action='store_true',
                        help='evaluate even if the checkpoint does not fit the model (missing, unexpected or '
                        'other-shaped tensors keep the model\'s initial values)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def tested_segmentor(model: torch.nn.Module) -> torch.nn.Module:
    """The segmentor inside the runner's model: unwrapped from a distributed wrapper and from the TTA model."""
    model = model.module if is_model_wrapper(model) else model
    return model.module if isinstance(model, BaseTTAModel) else model


class FuseConvBNHook(Hook):
    """Folds BN into convolutions once the checkpoint is loaded, right before testing starts."""

    priority = 'VERY_HIGH'

    def before_test(self, runner) -> None:
        from mmseg_ext.folding import fuse_conv_bn
        fuse_conv_bn(tested_segmentor(runner.model))


class InferenceTimerHook(Hook):
    """Times every test iteration: preprocessing, the network and postprocessing of one batch, without the
    data loading before it or the visualisation after it (the highest priority runs first on both sides)."""

    priority = 'HIGHEST'

    def __init__(self) -> None:
        self.seconds_per_image: List[float] = []
        self._start = 0.0

    def before_test_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._start = time.perf_counter()

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        elapsed = time.perf_counter() - self._start
        images = max(len(outputs or ()), 1)
        self.seconds_per_image.extend([elapsed / images] * images)

    def median_ms(self) -> Optional[float]:
        return statistics.median(self.seconds_per_image) * 1000 if self.seconds_per_image else None


def overlay_root(cfg: Config, args: argparse.Namespace) -> str:
    """Where the visualizer writes: ``--show-dir``, relative paths taken inside the work dir."""
    return args.show_dir if osp.isabs(args.show_dir) else osp.join(cfg.work_dir, args.show_dir)


def print_summary(metrics: dict, cfg: Config, args: argparse.Namespace, timer: InferenceTimerHook) -> None:
    """The headline numbers and where the outputs went, after mmseg's per-class table in the log."""
    if get_rank() != 0:
        return
    headline = '  '.join(f'{key}: {value:.2f}' for key, value in metrics.items() if isinstance(value, numbers.Real))
    print(f'[test] {headline}')
    if timer.median_ms() is not None:
        print(f'[test] time per image: {timer.median_ms():.1f} ms (median of {len(timer.seconds_per_image)}; '
              f'preprocessing, network and postprocessing, without data loading)')
    if args.show_dir:
        print(f"[test] prediction overlays: {osp.join(overlay_root(cfg, args), 'vis_data', 'vis_image')}")
    if args.out:
        print(f'[test] predicted label maps: {args.out}')
    if args.cityscapes_format:
        print(f'[test] Cityscapes labelId PNGs for the test server: {args.cityscapes_format}')


def enable_visualization(cfg: Config, args: argparse.Namespace) -> None:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise PreflightError("--show/--show-dir need default_hooks.visualization=dict(type='SegVisualizationHook')"
                             ' in the config')
    hooks.visualization.draw = True
    hooks.visualization.interval = 1  # mmseg's default (50) would skip most images
    if args.show:
        hooks.visualization.show = True
        hooks.visualization.wait_time = args.wait_time
    if args.show_dir:
        cfg.visualizer.save_dir = overlay_root(cfg, args)


def build_config(args: argparse.Namespace) -> Config:
    """The config with the command line applied, as mmseg's test tool builds it."""
    cfg = load_run_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    if not osp.isfile(args.checkpoint):
        raise PreflightError(f'checkpoint not found: {args.checkpoint}')
    # No cfg.load_from: main() reads the checkpoint once and loads it, checked, into the runner's model.
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise PreflightError('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.cityscapes_format:
        if args.out:
            raise PreflightError('--out and --cityscapes-format both set the evaluator\'s output; give one')
        cfg.test_evaluator = dict(type='CityscapesMetric', format_only=True, keep_results=True,
                                  output_dir=args.cityscapes_format)
    if args.out is not None:
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    onnx = is_onnx_file(args.checkpoint)
    try:
        check_runtime_choice(args.checkpoint, args.runtime)
        if not onnx:  # an exported file's runtime checks its own precision when it opens the file
            check_precision(args.precision, get_device())
        elif args.compile:
            raise PreflightError('--compile applies to PyTorch checkpoints; an .onnx file is compiled by its runtime')
        cfg = build_config(args)
        if onnx:
            use_onnx_model(cfg, args.checkpoint, runtime=args.runtime or 'onnxruntime', precision=args.precision)
        if not args.no_preflight:
            check_datasets(cfg, phases=('test', ))
        # unreadable checkpoints stop here, before the runner is built
        checkpoint = None if onnx else read_checkpoint_file(args.checkpoint, map_location='cpu')
    except (PreflightError, PrecisionError, DeployError, *CHECKPOINT_ERRORS) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    start_cpu_process_group(cfg)
    runner = Runner.from_cfg(cfg)
    if checkpoint is not None:
        try:  # before the runner builds the dataloader: the weights must fit the model it built
            summary = apply_weights(runner.model, checkpoint, args.checkpoint, args.allow_partial_weights)
        except CHECKPOINT_ERRORS as error:
            print(f'error: {error}', file=sys.stderr)
            return 2
        del checkpoint
        log_weights_summary(summary)
    if args.precision == 'bf16' and not onnx:
        enable_bf16_inference(tested_segmentor(runner.model), get_device())
    elif args.fuse_conv_bn:  # bf16 inference folds BN itself
        runner.register_hook(FuseConvBNHook())
    if args.compile:
        segmentor = tested_segmentor(runner.model)
        # encode_decode is what whole and slide inference call: the network and the resize of its logits.
        segmentor.encode_decode = torch.compile(segmentor.encode_decode)
    timer = InferenceTimerHook()
    runner.register_hook(timer)
    metrics = runner.test()
    print_summary(metrics, cfg, args, timer)
    return 0


if __name__ == '__main__':
    sys.exit(main())
