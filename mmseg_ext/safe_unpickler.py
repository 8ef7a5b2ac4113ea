"""Safe checkpoint loading for mmengine on torch >= 2.6: a restricted unpickler with mmengine's types allowed.

torch 2.6 made ``torch.load`` default to ``weights_only=True``. mmengine 0.10.7 calls it without the
argument, so checkpoints its own runner wrote fail to load: besides tensors they pickle
``mmengine.logging.HistoryBuffer``, numpy arrays, dtypes and scalars (through ``_codecs.encode``) and
``builtins.getattr`` (for ``HistoryBuffer``'s statistics methods). Turning ``weights_only`` off would let any checkpoint run code on load.

This module keeps torch's restricted unpickler and widens its allow-list, only while mmengine loads a
local file, by exactly those types. ``builtins.getattr`` is not allowed as such (chained attribute
access on allowed objects reaches arbitrary functions); the name is bound to :func:`_restricted_getattr`,
which resolves only the names those files look up.

A file that needs anything else is refused with :class:`UnsafeCheckpointError` naming the global it
asked for; nothing from the file runs. Checkpoints holding only tensors and plain data (mmseg's model
zoo, converted checkpoints) load as before.
"""
import os.path as osp
import pickle
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = ['UnsafeCheckpointError', 'load_checkpoint_file', 'mmengine_safe_globals', 'install']


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asked the unpickler for code it is not allowed to run."""


def _numpy_dtype_classes() -> List[type]:
    kinds = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128, np.str_, np.bytes_,
             np.object_, np.void]
    return [type(np.dtype(kind)) for kind in kinds]


_DTYPE_CLASSES = {cls.__name__: cls for cls in _numpy_dtype_classes()}
# HistoryBuffer's defaults; statistics registered later by the user's code are allowed too.
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _restricted_getattr(obj: Any, name: str) -> Any:
    """Stand-in for ``builtins.getattr`` inside a checkpoint.

    Resolves only HistoryBuffer's registered statistics methods (a buffer pickles them by reference)
    and numpy's dtype classes. The unpickler cannot call what this returns: only allow-listed globals
    can be called.
    """
    if obj is HistoryBuffer and (name in _HISTORY_BUFFER_STATISTICS or name in HistoryBuffer._statistics_methods):
        return getattr(HistoryBuffer, name)
    if getattr(obj, '__name__', None) == 'numpy.dtypes' and name in _DTYPE_CLASSES:
        return _DTYPE_CLASSES[name]
    raise UnsafeCheckpointError(f'checkpoint asked for attribute {name!r} of {obj!r}, which is not allowed')


def _numpy_core():
    try:
        from numpy._core import multiarray  # numpy >= 2
        return multiarray, 'numpy._core.multiarray'
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
        return multiarray, 'numpy.core.multiarray'


def mmengine_safe_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """The globals mmengine runner checkpoints need beyond torch's defaults."""
    import _codecs
    import numpy.dtypes
    multiarray, core_path = _numpy_core()
    allowed: List[Union[Callable, Tuple[Callable, str]]] = [
        HistoryBuffer, np.ndarray, np.dtype, _codecs.encode, (_restricted_getattr, 'builtins.getattr'),
        (multiarray._reconstruct, f'{core_path}._reconstruct'), (multiarray.scalar, f'{core_path}.scalar'),
        # numpy 2 pickles may still name numpy.core (older writers) and vice versa
        (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
        (multiarray.scalar, 'numpy.core.multiarray.scalar'), (numpy.dtypes, 'numpy.dtypes')
    ]
    allowed += [(cls, f'numpy.dtypes.{name}') for name, cls in _DTYPE_CLASSES.items()]
    return allowed


def load_checkpoint_file(filename: str, map_location: Any = None) -> Any:
    """``torch.load`` a local checkpoint with ``weights_only=True`` and mmengine's data types allowed.

    Raises:
        FileNotFoundError: if ``filename`` does not exist.
        UnsafeCheckpointError: if the file needs any other global (it may run code when unpickled).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint not found: {filename}')
    try:
        with torch.serialization.safe_globals(mmengine_safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(f'refused to load {filename}: {error}') from None
    except pickle.UnpicklingError as error:
        detail = _unpickler_reason(str(error))
        raise UnsafeCheckpointError(
            f'refused to load {filename}: it holds pickled objects other than tensors and plain data, which '
            f'could run code when loaded ({detail}). If you trust the file, load it yourself with '
            '`torch.load(path, weights_only=False)` and save its state_dict with torch.save.') from None


def _unpickler_reason(message: str) -> str:
    """The one informative sentence of torch's long weights_only error message."""
    reason = message.split('WeightsUnpickler error:', 1)[-1].split('Check the documentation', 1)[0]
    return ' '.join(reason.split()) or message


def _load_local(filename: str, map_location: Any = None) -> Any:
    return load_checkpoint_file(filename, map_location)


def install() -> None:
    """Route mmengine's loading of local files (``load_from``, ``resume``, ``init_cfg``) through
    :func:`load_checkpoint_file`. Idempotent."""
    CheckpointLoader.register_scheme(prefixes='', loader=_load_local, force=True)
