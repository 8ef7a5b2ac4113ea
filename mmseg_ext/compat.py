"""Every workaround for a bug of a library version the plugin runs on, in one place.

Each entry says what it works around and applies only where the installed versions need it; when a
release fixes the bug, moving the bound retires the workaround. :func:`apply` runs on ``import
mmseg_ext``; :func:`start_cpu_process_group` is called by the tools once a run's config is known, and
:func:`traceable_upsampling` by the ONNX export.

* **mmengine <= 0.10.7 loads checkpoints with a bare ``torch.load``** (no ``weights_only``): since
  torch 2.6 that refuses the files mmengine's own runner writes, and before it any file may run code.
  Local files go through :func:`mmseg_ext.checkpoint.safe_unpickler.load_checkpoint_file` instead.
* **mmengine <= 0.10.7 writes checkpoints in place and prunes before it saves**: a run killed while saving
  leaves a half-written newest file, or with ``max_keep_ckpts=1`` none at all. Checkpoints and
  ``last_checkpoint`` are written atomically and pruned after the save (:mod:`mmseg_ext.checkpoint.atomic_save`).
* **mmengine <= 0.10.7's ``pytorch`` launcher calls ``torch.cuda.set_device``**, which fails on a CPU
  build of torch, so ``--launcher pytorch`` (torchrun) cannot start without CUDA.
* **mmengine's table of packages whose configs ``package::`` can name is closed** (``MODULE2PACKAGE``, last
  checked: 0.10.7): the plugin adds itself, so ``_base_ = ['mmseg_ext::erfnet/...']`` and
  ``mmengine.hub.get_config('mmseg_ext::...')`` find the configs shipped in ``mmseg_ext/.mim/configs``.
* **mmengine <= 0.10.7 locates a package from its distribution's folder**, which is not the package's in an
  editable install (``pip install -e``): for ``mmseg_ext`` the imported package's own folder is used.
* **mmseg's ``Upsample`` (1.x up to 1.2.2) sizes its output with Python ints**, which an ONNX trace
  freezes to the example's size: :func:`traceable_upsampling` swaps its forward while exporting.
"""
import contextlib
import datetime
import os.path as osp

import mmengine
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.utils import digit_version
from torch import nn

__all__ = ['apply', 'start_cpu_process_group', 'traceable_upsampling', 'MMENGINE_LOADS_UNSAFELY',
           'MMENGINE_LAUNCHER_NEEDS_CUDA', 'MMENGINE_SAVES_IN_PLACE']

_MMENGINE = digit_version(mmengine.__version__)

#: mmengine's ``CheckpointLoader`` calls ``torch.load`` without ``weights_only`` (last checked: 0.10.7).
MMENGINE_LOADS_UNSAFELY = _MMENGINE <= digit_version('0.10.7')
#: mmengine's ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` unconditionally (last checked: 0.10.7).
MMENGINE_LAUNCHER_NEEDS_CUDA = _MMENGINE <= digit_version('0.10.7')
#: mmengine's ``save_checkpoint`` writes in place and ``CheckpointHook`` removes the oldest kept checkpoint
#: before it writes the new one (last checked: 0.10.7).
MMENGINE_SAVES_IN_PLACE = _MMENGINE <= digit_version('0.10.7')
#: mmengine's ``get_installed_path`` joins the distribution's location and the package name, a folder an
#: editable install does not have (last checked: 0.10.7).
MMENGINE_MISPLACES_EDITABLE = _MMENGINE <= digit_version('0.10.7')
_PACKAGE = 'mmseg_ext'


def apply() -> None:
    """Install the import-time workarounds the installed versions need. Idempotent."""
    if MMENGINE_LOADS_UNSAFELY:
        from mmengine.runner.checkpoint import CheckpointLoader

        from .checkpoint.safe_unpickler import load_checkpoint_file
        # '' is mmengine's scheme for local paths (load_from, resume, init_cfg=Pretrained).
        CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)
    if MMENGINE_SAVES_IN_PLACE:
        from .checkpoint.atomic_save import install
        install()
    from mmengine.config.utils import MODULE2PACKAGE
    MODULE2PACKAGE.setdefault(_PACKAGE, _PACKAGE)
    if MMENGINE_MISPLACES_EDITABLE:
        _locate_plugin_from_its_import()


def _locate_plugin_from_its_import() -> None:
    """Make mmengine's ``get_installed_path('mmseg_ext')`` the imported package's folder."""
    import sys

    import mmengine.utils
    original = mmengine.utils.get_installed_path
    if getattr(original, 'locates_plugin', False):
        return

    def get_installed_path(package: str) -> str:
        if package == _PACKAGE:
            return osp.dirname(osp.abspath(__file__))
        return original(package)

    get_installed_path.locates_plugin = True
    # Modules imported later bind the name from mmengine.utils; these may have bound it already.
    for name in ('mmengine.utils', 'mmengine.utils.package_utils', 'mmengine.config.config', 'mmengine.hub.hub'):
        if name in sys.modules:
            sys.modules[name].get_installed_path = get_installed_path


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


def _upsample_by_scale(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=module.scale_factor, mode=module.mode, align_corners=module.align_corners)


@contextlib.contextmanager
def traceable_upsampling(model: nn.Module):
    """mmseg's ``Upsample`` computes its output size with Python ints (``int(t * scale_factor)``), which
    a trace freezes to the example's size; while exporting it interpolates by its scale factor instead:
    the same output size (floor of size x scale) and the same sampling positions (1 / scale)."""
    from mmseg.models.utils import Upsample
    patched = [m for m in model.modules() if isinstance(m, Upsample) and not m.size and m.scale_factor]
    for module in patched:
        module.forward = _upsample_by_scale.__get__(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
