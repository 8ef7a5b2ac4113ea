"""Train a segmentor with mmengine's runner, for mmseg's configs and this plugin's alike.

Flags and flow follow mmseg 1.x's ``tools/train.py``; in addition ``--resume`` takes an optional path,
the data roots and files are checked before the runner starts, and checkpoints load safely on
torch >= 2.6 (see :mod:`mmseg_ext.checkpoint.safe_unpickler`). ``--resume`` without a path continues from the newest
intact checkpoint, skipping one a kill cut short; a full disk while saving stops the run with one line
(:mod:`mmseg_ext.checkpoint.atomic_save`). ``load_from`` and ``--resume`` keep mmengine's
non-strict loading, but the checkpoint is read first: a file that is not a checkpoint, is damaged or is
unsafe stops the run with one line, and how its weights fit the model is logged
(:mod:`mmseg_ext.checkpoint.weights_check`).

Examples::

    python tools/train.py configs/erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py
    python tools/train.py CONFIG --resume                      # newest intact checkpoint in the work dir
    python tools/train.py CONFIG --resume work_dirs/x/iter_800.pth
    bash tools/dist_train.sh CONFIG 2                          # two processes via torchrun
"""
import argparse
import logging
import os
import os.path as osp
import sys
from typing import Optional

# Before torch starts its OpenMP runtime: waiting threads sleep instead of spinning, so this job and another
# process on the same cores do not stall each other (an explicit setting in the environment wins).
if 'OMP_WAIT_POLICY' not in os.environ and 'GOMP_SPINCOUNT' not in os.environ:
    os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner, find_latest_checkpoint

import mmseg_ext  # noqa: F401  (safe checkpoint loading, plugin registry)
from mmseg_ext.checkpoint.atomic_save import CheckpointDiskFullError, find_resumable_checkpoint
from mmseg_ext.checkpoint.reading import read_checkpoint_file
from mmseg_ext.checkpoint.safe_unpickler import CheckpointFileError, DamagedCheckpointError
from mmseg_ext.checkpoint.weights_check import check_weights, log_weights_summary
from mmseg_ext.compat import start_cpu_process_group
from mmseg_ext.launch import load_run_config
from mmseg_ext.preflight import PreflightError, check_datasets
from mmseg.registry import RUNNERS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', nargs='?', const='auto', default=None, metavar='PATH',
        help='resume training: from PATH if given, otherwise from the newest intact checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed-precision training: float16 AMP on a GPU, bfloat16 autocast on CPU')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, e.g. train_cfg.max_iters=100 model.decode_head.num_classes=19')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--no-preflight', action='store_true',
                        help='skip checking the data roots and files before training')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_config(args: argparse.Namespace) -> Config:
    """The config with the command line applied, as mmseg's train tool builds it."""
    cfg = load_run_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    configure_amp(cfg, args.amp)

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = choose_resume_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise PreflightError(f'--resume checkpoint not found: {args.resume}')
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def _has_amp_accelerator() -> bool:
    """Whether mmengine's float16 ``AmpOptimWrapper`` can run here (it asserts one of these devices)."""
    from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
    return is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()


def configure_amp(cfg: Config, amp: bool) -> None:
    """Mixed precision for ``--amp``: mmengine's float16 ``AmpOptimWrapper`` (dynamic loss scale) on a GPU,
    bfloat16 autocast (:class:`mmseg_ext.engine.Bf16AutocastOptimWrapper`, no loss scale) on CPU.

    Raises:
        PreflightError: for an optimizer wrapper --amp cannot change, a config that asks for float16 AMP on a
            machine without a GPU, or bf16 on a CPU without native bf16.
    """
    from mmseg_ext.precision import PrecisionError, check_precision
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    accelerated = _has_amp_accelerator()
    if wrapper == 'AmpOptimWrapper' and not accelerated:
        raise PreflightError("the config's optim_wrapper is AmpOptimWrapper (float16, GPU only in mmengine) and "
                             "this machine has no GPU; set optim_wrapper.type='OptimWrapper' and pass --amp "
                             "for bfloat16 autocast on CPU")
    if not amp:
        return
    if wrapper in ('AmpOptimWrapper', 'mmseg_ext.Bf16AutocastOptimWrapper'):
        print_log('AMP training is already enabled in your config.', logger='current', level=logging.WARNING)
    elif wrapper != 'OptimWrapper':
        raise PreflightError(f'--amp needs optim_wrapper.type OptimWrapper, but the config has {wrapper!r}')
    elif accelerated:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    else:
        try:
            check_precision('bf16', 'cpu')
        except PrecisionError as error:
            raise PreflightError(f'--amp on CPU (bfloat16 autocast): {error}') from None
        cfg.optim_wrapper.type = 'mmseg_ext.Bf16AutocastOptimWrapper'


def choose_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The newest intact checkpoint of ``work_dir`` for ``--resume`` without a path; None without any
    checkpoint (training starts afresh, as in mmengine). Logs each newer damaged or missing file it skips
    and each leftover temporary file it removes (the first process only, so ranks do not race).

    Raises:
        PreflightError: if the work dir has checkpoints but none of them is intact.
    """
    first_process = os.environ.get('RANK', '0') == '0'
    checkpoint, skipped, removed = find_resumable_checkpoint(work_dir, remove_leftovers=first_process)
    for line in skipped:
        print_log(f'--resume: {line}', logger='current', level=logging.WARNING)
    for path in removed:
        print_log(f'--resume: removed {path}, a temporary file left by a run killed while saving', logger='current')
    if checkpoint is None and skipped:
        raise PreflightError(f'--resume found no intact checkpoint in {work_dir}: every one is damaged or missing '
                             '(listed above)')
    return checkpoint


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = build_config(args)
        if not args.no_preflight:
            check_datasets(cfg, phases=('train', 'val'))
    except PreflightError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    start_cpu_process_group(cfg)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    try:
        report_starting_weights(runner, cfg)
    except (CheckpointFileError, FileNotFoundError) as error:
        hint = ''
        if isinstance(error, DamagedCheckpointError) and args.resume not in (None, 'auto'):
            hint = '; `--resume` without a path continues from the newest intact checkpoint in the work dir'
        print(f'error: {error}{hint}', file=sys.stderr)
        return 2
    try:
        runner.train()
    except CheckpointFileError as error:  # a backbone's init_cfg checkpoint, read when training starts
        print(f'error: {error}', file=sys.stderr)
        return 2
    except CheckpointDiskFullError as error:  # the previous checkpoint is intact; nothing partial was left
        print(f'error: {error}', file=sys.stderr)
        return 1
    return 0


def report_starting_weights(runner: Runner, cfg: Config) -> None:
    """Read the checkpoint ``load_from``/``--resume`` will load and log how its weights fit the model.

    mmengine's behaviour is kept (non-strict loading); a file that cannot be read raises
    :class:`CheckpointFileError` here, before training starts.
    """
    path = cfg.get('load_from')
    if cfg.get('resume') and not path:
        path = find_latest_checkpoint(cfg.work_dir)
    if not path:
        return
    checkpoint = read_checkpoint_file(path, map_location='cpu')
    log_weights_summary(check_weights(runner.model, checkpoint, path, allow_partial=True))


if __name__ == '__main__':
    sys.exit(main())
