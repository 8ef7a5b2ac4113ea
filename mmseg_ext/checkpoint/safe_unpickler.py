"""Safe checkpoint loading for mmengine on torch >= 2.6: a restricted unpickler with mmengine's types allowed.

torch 2.6 made ``torch.load`` default to ``weights_only=True``. mmengine 0.10.7 calls it without the
argument, so checkpoints its own runner wrote fail to load: besides tensors they pickle
``mmengine.logging.HistoryBuffer``, numpy arrays, dtypes and scalars (through ``_codecs.encode``) and
``builtins.getattr`` (for ``HistoryBuffer``'s statistics methods). Turning ``weights_only`` off would let any checkpoint run code on load.

This module keeps torch's restricted unpickler and widens its allow-list, only while mmengine loads a
(routed here by :mod:`mmseg_ext.compat`)
local file, by exactly those types. ``builtins.getattr`` is not allowed as such (chained attribute
access on allowed objects reaches arbitrary functions); the name is bound to :func:`_restricted_getattr`,
which resolves only the names those files look up.

A file that needs anything else is refused with :class:`UnsafeCheckpointError` naming the global it
asked for; nothing from the file runs. Checkpoints holding only tensors and plain data (mmseg's model
zoo, converted checkpoints) load as before.

Files that cannot be used get one of three diagnoses, each a one-line message naming the file:
:class:`NotACheckpointError` (an image, a text or web page, random bytes), :class:`DamagedCheckpointError`
(a zip cut short or failing its CRC-32 checks: torch itself does not check them and would load corrupted
tensors silently) and :class:`UnsafeCheckpointError` (a pickle asking for code). All three derive from
:class:`CheckpointFileError`, which the tools catch.
"""
import importlib.util
import os.path as osp
import pickle
import re
import struct
import sys
import zipfile
import zlib
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['CheckpointFileError', 'NotACheckpointError', 'DamagedCheckpointError', 'UnsafeCheckpointError',
           'load_checkpoint_file', 'diagnose_file', 'mmengine_safe_globals']


class CheckpointFileError(ValueError):
    """A file that cannot be used as a checkpoint; the message is one line that names it."""


class NotACheckpointError(CheckpointFileError):
    """The file is something else: an image, text, a web page, random bytes, a foreign archive."""


class DamagedCheckpointError(CheckpointFileError):
    """The file is a checkpoint, but cut short or with bytes changed."""


class UnsafeCheckpointError(CheckpointFileError, pickle.UnpicklingError):
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


# How files that are not checkpoints begin; a few bytes name what the file is instead.
_ZIP_SIGNATURE = b'PK\x03\x04'
_EMPTY_ZIP_SIGNATURE = b'PK\x05\x06'
# torch.save's format before torch 1.6: a protocol-2 pickle of its magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_SIGNATURE = b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.'
_FOREIGN_SIGNATURES = (
    (b'\x89PNG\r\n\x1a\n', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'), (b'GIF8', 'a GIF image'),
    (b'BM', 'a BMP image'), (b'II*\x00', 'a TIFF image'), (b'MM\x00*', 'a TIFF image'), (b'%PDF', 'a PDF document'),
    (b'\x1f\x8b', 'gzip-compressed data (unpack it first)'), (b'BZh', 'bzip2-compressed data (unpack it first)'),
    (b'\xfd7zXZ\x00', 'xz-compressed data (unpack it first)'), (b'7z\xbc\xaf', 'a 7-Zip archive'),
    (b'\x93NUMPY', 'a NumPy .npy array'), (b'\x89HDF\r\n\x1a\n', 'an HDF5 file (Keras/TensorFlow weights?)'),
    (b'\x7fELF', 'an executable'),
)
_CUT_OFF = 'it was probably cut off while being written or copied: copy or download it again'
_CHANGED = 'it was probably cut off or corrupted while being written or copied: copy or download it again'


def _describe_foreign_bytes(head: bytes) -> str:
    """What a file that torch.save did not write looks like, from its first bytes."""
    for signature, what in _FOREIGN_SIGNATURES:
        if head.startswith(signature):
            return what
    if len(head) >= 10 and head[8:10] == b'{"':
        return 'a safetensors file (tools/model_converters/convert_checkpoint.py reads published safetensors weights)'
    if head[:1] == b'\x80':
        return 'a Python pickle that torch.save did not write'
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        text = None
    if text is not None and all(char.isprintable() or char in '\r\n\t' for char in text):
        lowered = text.lstrip().lower()
        if lowered.startswith(('<!doctype html', '<html', '<?xml', '<head')):
            return 'a web page (the download fetched a page instead of the file?)'
        if lowered.startswith('version https://git-lfs'):
            return 'a Git LFS pointer, not the file itself (run `git lfs pull`)'
        return f'a text file (it begins {text.strip()[:40]!r})'
    return 'unrecognised binary data (neither the zip archive torch.save writes nor a pickle)'


def _check_zip_archive(filename: str) -> None:
    """Refuse a zip that is cut short, fails its CRC-32 checks, or holds no pickled checkpoint."""
    try:
        archive = zipfile.ZipFile(filename)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise DamagedCheckpointError(
            f'damaged checkpoint {filename}: a zip archive (the format torch.save writes) without its closing '
            f'directory, so it is cut short ({osp.getsize(filename)} bytes); {_CUT_OFF}') from None
    with archive:
        entries = archive.infolist()
        if not any(info.filename == 'data.pkl' or info.filename.endswith('/data.pkl') for info in entries):
            names = ', '.join(info.filename for info in entries[:3]) or 'nothing'
            raise NotACheckpointError(f'not a checkpoint: {filename} is a zip archive without data.pkl, so not a '
                                      f'PyTorch checkpoint (it holds {names})')
        for info in entries:
            if info.CRC == 0 and info.file_size:  # written with torch's CRC-32 option off: nothing to check
                continue
            try:
                with archive.open(info) as member:
                    while member.read(1 << 22):
                        pass
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
                problem = 'fails its CRC-32 check' if 'CRC' in str(error) else f'cannot be read ({error})'
                raise DamagedCheckpointError(f'damaged checkpoint {filename}: its entry {info.filename} {problem}; '
                                             f'{_CHANGED}') from None


def diagnose_file(filename: str) -> str:
    """``'zip'`` or ``'legacy'`` for a file in one of torch.save's formats whose zip structure and CRC-32
    checksums are intact; raise :class:`NotACheckpointError` or :class:`DamagedCheckpointError` otherwise.

    Reads the whole file once for a zip (CRC-32 of every entry, the cost of reading it again).
    """
    size = osp.getsize(filename)
    if size == 0:
        raise DamagedCheckpointError(f'damaged checkpoint {filename}: the file is empty (0 bytes); {_CUT_OFF}')
    with open(filename, 'rb') as file:
        head = file.read(64)
    if head.startswith(_ZIP_SIGNATURE):
        _check_zip_archive(filename)
        return 'zip'
    if head.startswith(_EMPTY_ZIP_SIGNATURE):
        raise NotACheckpointError(f'not a checkpoint: {filename} is an empty zip archive')
    if head.startswith(_LEGACY_TORCH_SIGNATURE):
        return 'legacy'
    if _LEGACY_TORCH_SIGNATURE.startswith(head):
        raise DamagedCheckpointError(f'damaged checkpoint {filename}: only {size} bytes of a checkpoint; {_CUT_OFF}')
    raise NotACheckpointError(f'not a checkpoint: {filename} is {_describe_foreign_bytes(head)}')


def _global_exists(dotted_name: str) -> bool:
    """Whether ``module.attribute`` names something that exists, without importing anything new
    (importing a module a hostile file names could run its code)."""
    module_name, _, attribute = dotted_name.rpartition('.')
    if module_name in sys.modules:
        return hasattr(sys.modules[module_name], attribute)
    top_level = module_name.split('.')[0]
    return bool(top_level) and importlib.util.find_spec(top_level) is not None


def _refusal(filename: str, error: pickle.UnpicklingError, layout: str) -> CheckpointFileError:
    """The diagnosis of a file torch's restricted unpickler refused."""
    message = str(error)
    asked = re.search(r'GLOBAL ([\w.]+)', message)
    if asked and _global_exists(asked.group(1)):
        return UnsafeCheckpointError(
            f'unsafe checkpoint: refused to load {filename}: it asks for {asked.group(1)}, which could run code when '
            'loaded; nothing from it ran. If you trust the file, load it yourself with '
            '`torch.load(path, weights_only=False)` and save its state_dict with torch.save')
    if asked or 'Unsupported operand' in message or 'EOF' in message:
        # Bytes that do not decode as a pickle; a zip's entries passed their CRC-32 check, so it was written so.
        if layout == 'zip':
            return NotACheckpointError(f'not a checkpoint: {filename} is a zip archive whose data.pkl is not a '
                                       f'pickle torch can read ({_unpickler_reason(message)})')
        return DamagedCheckpointError(f'damaged checkpoint {filename}: its pickled data is garbled '
                                      f'({_unpickler_reason(message)}); {_CHANGED}')
    return UnsafeCheckpointError(
        f'unsafe checkpoint: refused to load {filename}: it holds pickled objects other than tensors and plain '
        f'data, which could run code when loaded ({_unpickler_reason(message)}); nothing from it ran. If you '
        'trust the file, load it yourself with `torch.load(path, weights_only=False)` and save its state_dict '
        'with torch.save')


def load_checkpoint_file(filename: str, map_location: Any = None) -> Any:
    """``torch.load`` a local checkpoint with ``weights_only=True`` and mmengine's data types allowed.

    Raises:
        FileNotFoundError: if ``filename`` does not exist.
        NotACheckpointError: if the file is something else (image, text, random bytes, ...).
        DamagedCheckpointError: if it is cut short or its bytes changed (CRC-32 of the zip entries).
        UnsafeCheckpointError: if the file needs any other global (it may run code when unpickled).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint not found: {filename}')
    layout = diagnose_file(filename)
    try:
        with torch.serialization.safe_globals(mmengine_safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(f'unsafe checkpoint: refused to load {filename}: {error}; nothing from it ran') \
            from None
    except pickle.UnpicklingError as error:
        raise _refusal(filename, error, layout) from None
    except EOFError:
        raise DamagedCheckpointError(f'damaged checkpoint {filename}: it ends early; {_CUT_OFF}') from None
    except (IndexError, KeyError, ValueError, struct.error) as error:
        if layout != 'legacy':  # a zip passed its CRC-32 checks: not damage, let the error speak for itself
            raise
        # The pre-1.6 format has no checksums: a cut-off file fails wherever the unpickler runs out of bytes.
        raise DamagedCheckpointError(f'damaged checkpoint {filename}: its data ends or breaks off early '
                                     f'({type(error).__name__}); {_CUT_OFF}') from None


def _unpickler_reason(message: str) -> str:
    """The one informative sentence of torch's long weights_only error message."""
    reason = message.split('WeightsUnpickler error:', 1)[-1].split('Check the documentation', 1)[0]
    if 'Weights only load failed' in reason:  # messages without the 'WeightsUnpickler error:' marker
        reason = reason.split('trusted source.', 1)[-1]
    return ' '.join(reason.split()) or message
