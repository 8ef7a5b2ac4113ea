"""Every workaround for a bug of a library version the plugin runs on, in one place.

Each entry says what it works around and applies only where the installed versions need it; when a
release fixes the bug, moving the bound retires the workaround. :func:`apply` runs on ``import
mmseg_ext``; :func:`start_cpu_process_group` is called by the tools once a run's config is known.

* **mmengine <= 0.10.7 loads checkpoints with a bare ``torch.load``** (no ``weights_only``): since
  torch 2.6 that refuses the files mmengine's own runner writes, and before it any file may run code.
  Local files go through :func:`mmseg_ext.safe_unpickler.load_checkpoint_file` instead.
* **mmengine <= 0.10.7's ``pytorch`` launcher calls ``torch.cuda.set_device``**, which fails on a CPU
  build of torch, so ``--launcher pytorch`` (torchrun) cannot start without CUDA.
"""
import datetime

import mmengine
import torch
from mmengine.config import Config
from mmengine.utils import digit_version

__all__ = ['apply', 'start_cpu_process_group', 'MMENGINE_LOADS_UNSAFELY', 'MMENGINE_LAUNCHER_NEEDS_CUDA']

_MMENGINE = digit_version(mmengine.__version__)

#: mmengine's ``CheckpointLoader`` calls ``torch.load`` without ``weights_only`` (last checked: 0.10.7).
MMENGINE_LOADS_UNSAFELY = _MMENGINE <= digit_version('0.10.7')
#: mmengine's ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` unconditionally (last checked: 0.10.7).
MMENGINE_LAUNCHER_NEEDS_CUDA = _MMENGINE <= digit_version('0.10.7')


def apply() -> None:
    """Install the import-time workarounds the installed versions need. Idempotent."""
    if MMENGINE_LOADS_UNSAFELY:
        from mmengine.runner.checkpoint import CheckpointLoader

        from .safe_unpickler import load_checkpoint_file
        # '' is mmengine's scheme for local paths (load_from, resume, init_cfg=Pretrained).
        CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)


def start_cpu_process_group(cfg: Config) -> None:
    """Start the process group for ``--launcher pytorch`` on a machine without CUDA.

    The runner skips its own (CUDA-only) initialisation when a process group exists, so starting it here
    from torchrun's environment variables is enough. No-op in every other case.
    """
    if (not MMENGINE_LAUNCHER_NEEDS_CUDA or cfg.get('launcher') != 'pytorch' or torch.cuda.is_available()
            or torch.distributed.is_initialized()):
        return
    dist_cfg = cfg.get('env_cfg', {}).get('dist_cfg', {})
    timeout = dist_cfg.get('timeout')
    kwargs = {'timeout': datetime.timedelta(seconds=timeout)} if timeout else {}
    torch.distributed.init_process_group(backend=dist_cfg.get('backend', 'gloo'), **kwargs)
