"""Checkpoints that survive a kill or a full disk: atomic writes, pruning after the save, and resuming from
the newest intact file.

mmengine 0.10.7 writes a checkpoint in place, updates ``last_checkpoint`` afterwards with a plain
``open(..., 'w')``, and its ``CheckpointHook`` removes the oldest kept checkpoint *before* it writes the new
one. A process killed while saving (``kill -9``, an out-of-memory kill, a pre-empted node) leaves a
half-written newest file, and with ``max_keep_ckpts=1`` no usable checkpoint at all. :func:`install`
(called by :func:`mmseg_ext.compat.apply` on the versions that need it) changes two places:

* ``mmengine.runner.checkpoint.save_checkpoint``, the one function every local checkpoint write goes
  through (``Runner.save_checkpoint``, the hooks, the strategies), is replaced where it is bound
  (``mmengine.runner.checkpoint``, ``mmengine.runner.runner`` and ``mmengine.runner``): local files are written
  by :func:`write_atomically`; other backends (remote storage, ``pavi://``) keep mmengine's own write, as a
  rename-into-place exists only on a local file system. Patching ``LocalBackend.put`` instead would change
  every file mmengine writes, not only checkpoints.
* ``CheckpointHook._save_checkpoint_with_step`` is replaced by :func:`_save_checkpoint_then_prune`: that
  method's whole content is the order of its steps (prune, save, point ``last_checkpoint``), so it is
  restated in the order that keeps a complete checkpoint at every moment (save, point, prune).
* ``CheckpointHook._save_best_checkpoint`` (``save_best``) also removes the previous best checkpoint before
  it writes the new one, amid score bookkeeping; :func:`_save_best_then_prune` runs mmengine's method with
  the removals held back until it has returned.

:func:`find_resumable_checkpoint` picks what ``tools/train.py --resume`` (without a path) continues from.
"""
import contextlib
import errno
import io
import os
import os.path as osp
import re
import shutil
from typing import List, Optional, Tuple, Union

import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook
from mmengine.runner import checkpoint as _mmengine_checkpoint

from .safe_unpickler import DamagedCheckpointError, NotACheckpointError, diagnose_file

__all__ = ['CheckpointDiskFullError', 'write_atomically', 'save_checkpoint_atomically', 'install',
           'find_resumable_checkpoint', 'is_leftover_temporary', 'TEMPORARY_MARK']

#: Between a file's name and the writing process's id in the name of its temporary file, which starts with a
#: dot: ``.iter_3.pth.tmp-1234``.
TEMPORARY_MARK = '.tmp-'
_TEMPORARY_NAME = re.compile(r'^\..+' + re.escape(TEMPORARY_MARK) + r'\d+$')
# The names CheckpointHook gives by default ('iter_{}.pth', 'epoch_{}.pth').
_DEFAULT_CHECKPOINT_NAME = re.compile(r'^(?:iter|epoch)_(\d+)\.pth$')
_KILLED_WHILE_SAVING = 'the run was probably killed while saving it'

# mmengine's own functions, bound once, at import: the save for the backends a file cannot be renamed on,
# the best-checkpoint method that _save_best_then_prune runs.
_mmengine_save_checkpoint = _mmengine_checkpoint.save_checkpoint
_mmengine_save_best_checkpoint = CheckpointHook._save_best_checkpoint


class CheckpointDiskFullError(OSError):
    """The disk (or the user's quota) had no room for a checkpoint; ``str()`` is one line naming the folder
    and the bytes needed. An ``OSError`` with the original ``errno``, so existing handlers still match."""

    def __init__(self, error_number: int, message: str):
        super().__init__(error_number, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _sync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX: a directory is synced through a descriptor of its own)."""
    if os.name != 'posix':
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: str, data: Union[bytes, memoryview]) -> None:
    """Write ``data`` to ``path`` so that ``path`` is at every moment either its old content or all of ``data``.

    The bytes go to a temporary file in the same folder (``.NAME.tmp-PID``), are flushed and synced, and the
    file is renamed over ``path``; the folder is synced so the rename survives a power loss. On any error or
    interruption the temporary file is removed (a ``kill -9`` leaves it behind: it is never taken for a
    checkpoint, and :func:`find_resumable_checkpoint` removes it).

    Raises:
        CheckpointDiskFullError: if the disk or quota is full (``ENOSPC``/``EDQUOT``).
    """
    path = osp.abspath(path)
    folder, name = osp.split(path)
    os.makedirs(folder, exist_ok=True)  # as mmengine's LocalBackend.put does
    temporary = osp.join(folder, f'.{name}{TEMPORARY_MARK}{os.getpid()}')
    try:
        with open(temporary, 'wb') as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(error, folder, name, memoryview(data).nbytes) from error
        raise
    _sync_folder(folder)


def _disk_full(error: OSError, folder: str, name: str, needed: int) -> CheckpointDiskFullError:
    try:
        free = f'{shutil.disk_usage(folder).free} bytes are free'
    except OSError:
        free = 'the free space is unknown'
    reason = 'no space left on the device' if error.errno == errno.ENOSPC else 'disk quota exceeded'
    return CheckpointDiskFullError(
        error.errno, f'{reason} of {folder}: saving {name} needs {needed} bytes ({needed / 2**20:.1f} MiB) and '
        f'{free}; nothing was written and the previous checkpoint is intact: free some space and resume '
        '(tools/train.py CONFIG --resume)')


def save_checkpoint_atomically(checkpoint: dict, filename: str, file_client_args: Optional[dict] = None,
                               backend_args: Optional[dict] = None) -> None:
    """``mmengine.runner.checkpoint.save_checkpoint`` with local files written by :func:`write_atomically`.

    The checkpoint is serialised in memory first, as mmengine does, so a full disk can be told how much
    room it needed.
    """
    filename = str(filename)
    if filename.startswith('pavi://') or not _is_local(filename, file_client_args, backend_args):
        _mmengine_save_checkpoint(checkpoint, filename, file_client_args=file_client_args,
                                  backend_args=backend_args)
        return
    with io.BytesIO() as buffer:
        torch.save(checkpoint, buffer)
        with buffer.getbuffer() as serialized:  # no copy; released before the buffer closes
            write_atomically(filename, serialized)


def _is_local(filename: str, file_client_args: Optional[dict], backend_args: Optional[dict]) -> bool:
    if file_client_args is not None:  # mmengine's deprecated spelling; its arguments are checked by mmengine
        from mmengine.fileio import FileClient
        backend = FileClient.infer_client(file_client_args, filename).client
    else:
        backend = get_file_backend(filename, backend_args=backend_args)
    return isinstance(backend, LocalBackend)


def _save_checkpoint_then_prune(self: CheckpointHook, runner, step: int, meta: dict) -> None:
    """Stand-in for ``CheckpointHook._save_checkpoint_with_step``: the same bookkeeping, other order.

    The checkpoint is written first, then ``last_checkpoint`` names it (replaced atomically), and only then
    is the checkpoint that fell out of the ``max_keep_ckpts`` window removed. The kept ids are recorded in the
    message hub before the save, as mmengine does, so the checkpoint lists itself and a resumed run prunes
    the same files.
    """
    dropped_step = None
    if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
        # _save_checkpoint and _save_best_checkpoint may both save at one step; the id is kept once.
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            dropped_step = self.keep_ckpt_ids.popleft()
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

    filename = self.filename_tmpl.format(step)
    self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
    runner.message_hub.update_info('last_ckpt', self.last_ckpt)
    runner.save_checkpoint(self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
                           save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                           backend_args=self.backend_args, **self.args)
    if not is_main_process():  # only the main process writes files
        return
    write_atomically(osp.join(runner.work_dir, 'last_checkpoint'), str(self.last_ckpt).encode())
    if dropped_step is not None:
        dropped = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(dropped_step))
        if self.file_backend.isfile(dropped):
            self.file_backend.remove(dropped)
        elif self.file_backend.isdir(dropped):  # DeepSpeed saves a checkpoint as a folder
            self.file_backend.rmtree(dropped)


def _save_best_then_prune(self: CheckpointHook, runner, metrics: dict) -> None:
    """Stand-in for ``CheckpointHook._save_best_checkpoint``: mmengine's method, with every file removal it
    asks its file backend for carried out only once it has returned (so after the new best checkpoint is
    complete); when it raises, nothing is removed."""
    if not self.save_best:  # mmengine's method does nothing then
        return
    backend = self.file_backend
    held_back = []
    # Instance attributes shadow the backend's methods while mmengine's method runs.
    backend.remove = lambda path: held_back.append((type(backend).remove, path))
    backend.rmtree = lambda path: held_back.append((type(backend).rmtree, path))
    try:
        _mmengine_save_best_checkpoint(self, runner, metrics)
    finally:
        del backend.remove, backend.rmtree
    # one key indicator sets best_ckpt_path, several set best_ckpt_path_dict
    current = {getattr(self, 'best_ckpt_path', None), *getattr(self, 'best_ckpt_path_dict', {}).values(),
               self.last_ckpt}
    for remove, path in held_back:
        if path not in current:  # a file saved again under the same name is the new one
            remove(backend, path)


def install() -> None:
    """Route mmengine's checkpoint writes and the hook's pruning through this module. Idempotent."""
    import mmengine.runner
    import mmengine.runner.runner
    for module in (_mmengine_checkpoint, mmengine.runner.runner, mmengine.runner):
        module.save_checkpoint = save_checkpoint_atomically
    CheckpointHook._save_checkpoint_with_step = _save_checkpoint_then_prune
    CheckpointHook._save_best_checkpoint = _save_best_then_prune


def is_leftover_temporary(name: str) -> bool:
    """Whether a file name is that of a temporary file :func:`write_atomically` left behind when killed."""
    return bool(_TEMPORARY_NAME.match(name))


def _checkpoint_step(name: str) -> int:
    match = _DEFAULT_CHECKPOINT_NAME.match(name)
    return int(match.group(1)) if match else -1


def _read_last_checkpoint(work_dir: str) -> Tuple[Optional[str], List[str]]:
    """The path ``last_checkpoint`` names, and a line saying why there is none when the file is unreadable."""
    path = osp.join(work_dir, 'last_checkpoint')
    try:
        with open(path, encoding='utf-8') as file:
            named = file.read().strip()
    except FileNotFoundError:
        return None, []
    except UnicodeDecodeError:
        named = ''
    if not named or '\n' in named:
        return None, [f'skipped {path}: it does not name one checkpoint; the run was probably killed while '
                      'writing it']
    return named, []


def find_resumable_checkpoint(work_dir: str,
                              remove_leftovers: bool = True) -> Tuple[Optional[str], List[str], List[str]]:
    """The most recently written intact checkpoint of a work dir, for ``--resume`` without a path.

    The candidates are the file ``last_checkpoint`` names and the files named like CheckpointHook's defaults
    (``iter_N.pth``, ``epoch_N.pth``) in the work dir and in the folder ``last_checkpoint`` points into;
    the newest (modification time, then step) whose zip structure and CRC-32 checks are intact is chosen
    (:func:`mmseg_ext.checkpoint.safe_unpickler.diagnose_file`). Whether it is safe to unpickle is left to the loader.

    Returns:
        ``(checkpoint or None, skipped, removed)``: ``skipped`` has one line per newer file that is damaged
        or missing (an unreadable ``last_checkpoint`` included), ``removed`` the leftover temporary files
        deleted (when ``remove_leftovers``). A work dir without checkpoints gives None and no line; one
        whose checkpoints are all damaged gives None and a line for each.
    """
    named, skipped = _read_last_checkpoint(work_dir)
    folders = {osp.abspath(work_dir)} | ({osp.dirname(osp.abspath(named))} if named else set())
    candidates = {osp.abspath(named)} if named else set()
    removed = []
    for folder in sorted(folders):
        if not osp.isdir(folder):
            continue
        for name in os.listdir(folder):
            path = osp.join(folder, name)
            if is_leftover_temporary(name):
                if remove_leftovers:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
                        removed.append(path)
            elif _DEFAULT_CHECKPOINT_NAME.match(name) and osp.isfile(path):
                candidates.add(path)

    def newest_first(path: str):
        missing = not osp.exists(path)  # a missing last_checkpoint target is reported first
        return (missing, osp.getmtime(path) if not missing else 0.0, _checkpoint_step(osp.basename(path)))

    for path in sorted(candidates, key=newest_first, reverse=True):
        if not osp.exists(path):
            skipped.append(f'skipped {path}: last_checkpoint names it but it does not exist; the run was probably '
                           'killed while saving a checkpoint')
            continue
        try:
            diagnose_file(path)
        except (DamagedCheckpointError, NotACheckpointError):  # not what a finished save leaves
            skipped.append(f'skipped damaged checkpoint {path} ({osp.getsize(path)} bytes): {_KILLED_WHILE_SAVING}')
            continue
        return path, skipped, removed
    return None, skipped, removed
