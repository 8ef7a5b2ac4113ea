"""Checkpoints survive a kill while saving and a full disk (mmseg_ext.checkpoint.atomic_save, tools/train.py --resume).

A kill is simulated deterministically: the write of a chosen file stops after some bytes with an exception
that no handler of the runner catches, and the bytes written so far are put back under the temporary name,
as a ``kill -9`` (which runs no clean-up) would leave them.
"""
import errno
import io
import os
import shutil
from pathlib import Path
from typing import Optional

import pytest
import torch
from mmengine.runner import checkpoint as mmengine_checkpoint

import mmseg_ext.checkpoint.atomic_save as atomic
from mmseg_ext.checkpoint.atomic_save import CheckpointDiskFullError, find_resumable_checkpoint
from mmseg_ext.checkpoint.safe_unpickler import load_checkpoint_file
from utils import load_tool, small_checkpoint, write_tiny_config

# No validation: the tests are about the checkpoints a training run writes.
_CHECKPOINT_EVERY_ITER = """
train_cfg = dict(type='IterBasedTrainLoop', max_iters={max_iters})
val_cfg = None
val_dataloader = None
val_evaluator = None
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts={max_keep}), logger=dict(interval=1))
"""


class SimulatedKill(BaseException):
    """Stands for SIGKILL: derives from BaseException, so no ``except Exception`` of the runner stops it."""


class _WriteThatStops:
    """A file whose ``write`` stores ``limit`` bytes and then raises ``error``; with ``keep_partial`` the
    stored bytes are also copied there first (what a kill would leave under the temporary name)."""

    def __init__(self, file, limit: int, error: BaseException, keep_partial: Optional[Path]):
        self._file, self._limit, self._error, self._keep_partial = file, limit, error, keep_partial

    def write(self, data) -> int:
        self._file.write(bytes(memoryview(data)[:self._limit]))
        self._file.flush()
        if self._keep_partial is not None:
            shutil.copyfile(self._file.name, self._keep_partial)
        raise self._error

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._file.close()


def stop_writing(monkeypatch, name_part: str, error: BaseException, limit: int = 1000,
                 keep_partial: Optional[Path] = None) -> None:
    """Make every write of a file whose name contains ``name_part`` (its temporary file included) stop with
    ``error``: mmengine's own in-place write as well as the plugin's, so the tests fail without the plugin."""
    real_open = open

    def open_then_stop(path, mode='r', *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        if name_part in os.path.basename(path) and 'w' in mode:
            return _WriteThatStops(file, limit, error, keep_partial)
        return file

    monkeypatch.setattr('builtins.open', open_then_stop)


def serialized_size(checkpoint: dict) -> int:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getbuffer().nbytes


def temporary_files(folder: Path):
    return sorted(path.name for path in folder.iterdir() if atomic.is_leftover_temporary(path.name))


# --- the atomic write ----------------------------------------------------------------------------------------

def test_an_interrupted_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    target = small_checkpoint(tmp_path / 'iter_2.pth')
    before = target.read_bytes()
    stop_writing(monkeypatch, 'iter_2.pth', SimulatedKill())
    with pytest.raises(SimulatedKill):
        # mmengine's function, as Runner.save_checkpoint calls it (importing mmseg_ext patched it)
        mmengine_checkpoint.save_checkpoint({'state_dict': {'w': torch.ones(64)}}, str(target))
    assert target.read_bytes() == before
    assert temporary_files(tmp_path) == []


def test_a_full_disk_names_the_folder_and_the_bytes_needed(tmp_path, monkeypatch):
    checkpoint = {'meta': {'iter': 3}, 'state_dict': {'w': torch.ones(1000)}}
    stop_writing(monkeypatch, 'iter_3.pth', OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(CheckpointDiskFullError) as caught:
        mmengine_checkpoint.save_checkpoint(checkpoint, str(tmp_path / 'iter_3.pth'))
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert '\n' not in message and message.startswith(f'no space left on the device of {tmp_path}: ')
    assert f'saving iter_3.pth needs {serialized_size(checkpoint)} bytes' in message
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its temporary file


def test_the_previous_best_checkpoint_is_removed_only_after_the_new_one_is_saved(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mmengine.hooks import CheckpointHook
    from mmengine.logging import MessageHub, MMLogger
    previous_best = small_checkpoint(tmp_path / 'best_mIoU_iter_1.pth')
    hub = MessageHub(f'best-{tmp_path.name}')
    hub.update_info('best_score', 0.5)
    hub.update_info('best_ckpt', str(previous_best))

    def save_checkpoint(out_dir, filename, *args, **kwargs):
        mmengine_checkpoint.save_checkpoint({'meta': {'iter': 2}}, os.path.join(out_dir, filename))

    runner = SimpleNamespace(work_dir=str(tmp_path), message_hub=hub, epoch=0, iter=2, save_checkpoint=save_checkpoint,
                             logger=MMLogger.get_current_instance())
    without_best = CheckpointHook(interval=1, by_epoch=False)
    without_best.before_train(runner)
    without_best._save_best_checkpoint(runner, {'mIoU': 0.7})  # called after every validation
    hook = CheckpointHook(interval=1, by_epoch=False, save_best='mIoU', rule='greater')
    hook.before_train(runner)
    stop_writing(monkeypatch, 'best_mIoU_iter_2.pth', SimulatedKill())
    with pytest.raises(SimulatedKill):
        hook._save_best_checkpoint(runner, {'mIoU': 0.7})
    assert sorted(path.name for path in tmp_path.iterdir()) == ['best_mIoU_iter_1.pth']

    monkeypatch.undo()
    hub.update_info('best_score', 0.5)  # as a resumed run reads them from the previous checkpoint
    hook.best_ckpt_path = str(previous_best)
    hook._save_best_checkpoint(runner, {'mIoU': 0.7})
    assert sorted(path.name for path in tmp_path.iterdir()) == ['best_mIoU_iter_2.pth']


# --- choosing what --resume continues from ------------------------------------------------------------------

def _work_dir_with(tmp_path: Path, intact=(1, 2), damaged=(3, ), last: Optional[str] = 'iter_3.pth') -> Path:
    """iter_N.pth files written in step order (one second apart) and ``last_checkpoint`` naming ``last``."""
    work_dir = tmp_path / 'run'
    work_dir.mkdir()
    good = small_checkpoint(tmp_path / 'good.pth').read_bytes()
    for step in sorted(intact + damaged):
        path = work_dir / f'iter_{step}.pth'
        path.write_bytes(good if step in intact else good[:len(good) // 2])
        os.utime(path, (1_000_000 + step, 1_000_000 + step))
    if last is not None:
        (work_dir / 'last_checkpoint').write_text(str(work_dir / last))
    return work_dir


def test_resume_skips_a_damaged_newest_checkpoint_and_removes_leftovers(tmp_path):
    work_dir = _work_dir_with(tmp_path)
    (work_dir / '.iter_4.pth.tmp-12345').write_bytes(b'PK\x03\x04 half a checkpoint')
    (work_dir / '.last_checkpoint.tmp-12345').write_text('')
    checkpoint, skipped, removed = find_resumable_checkpoint(str(work_dir))
    assert checkpoint == str(work_dir / 'iter_2.pth')
    assert skipped == [f'skipped damaged checkpoint {work_dir / "iter_3.pth"} '
                       f'({(work_dir / "iter_3.pth").stat().st_size} bytes): the run was probably killed while '
                       'saving it']
    assert sorted(removed) == [str(work_dir / '.iter_4.pth.tmp-12345'), str(work_dir / '.last_checkpoint.tmp-12345')]
    assert temporary_files(work_dir) == []


def test_resume_skips_a_missing_last_checkpoint_target(tmp_path):
    work_dir = _work_dir_with(tmp_path, intact=(1, ), damaged=(), last='iter_2.pth')
    checkpoint, skipped, _ = find_resumable_checkpoint(str(work_dir))
    assert checkpoint == str(work_dir / 'iter_1.pth')
    assert len(skipped) == 1 and f'skipped {work_dir / "iter_2.pth"}: last_checkpoint names it but it does not ' \
        'exist' in skipped[0]


def test_resume_prefers_a_complete_checkpoint_newer_than_last_checkpoint(tmp_path):
    # killed after the new file was renamed into place, before last_checkpoint was replaced
    work_dir = _work_dir_with(tmp_path, intact=(1, 2), damaged=(), last='iter_1.pth')
    assert find_resumable_checkpoint(str(work_dir))[:2] == (str(work_dir / 'iter_2.pth'), [])


def test_resume_without_intact_checkpoint_is_an_error_and_without_any_starts_afresh(tmp_path, monkeypatch):
    train = load_tool('train')
    work_dir = _work_dir_with(tmp_path, intact=(), damaged=(1, 2), last='iter_2.pth')
    with pytest.raises(train.PreflightError, match=rf'--resume found no intact checkpoint in {work_dir}: '):
        train.choose_resume_checkpoint(str(work_dir))
    (tmp_path / 'empty').mkdir()
    assert train.choose_resume_checkpoint(str(tmp_path / 'empty')) is None


def test_resume_without_path_loads_the_newest_intact_checkpoint(tmp_path, tiny_data, monkeypatch):
    train = load_tool('train')
    monkeypatch.setenv('LOCAL_RANK', '0')
    work_dir = _work_dir_with(tmp_path)
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_data)
    cfg = train.build_config(train.parse_args([str(config), '--work-dir', str(work_dir), '--resume']))
    assert cfg.resume and cfg.load_from == str(work_dir / 'iter_2.pth')


# --- training killed while saving, then resumed ---------------------------------------------------------------

def _train(train, config: Path, work_dir: Path, name: str, *extra: str) -> int:
    return train.main([str(config), '--work-dir', str(work_dir), '--no-preflight', *extra, '--cfg-options',
                       f'experiment_name={name}'])


def _record_resumes(monkeypatch) -> list:
    """The files ``Runner.resume`` is called with, from now on."""
    from mmengine.runner import Runner
    resumed, resume = [], Runner.resume

    def recording_resume(self, filename, *args, **kwargs):
        resumed.append(filename)
        return resume(self, filename, *args, **kwargs)

    monkeypatch.setattr(Runner, 'resume', recording_resume)
    return resumed


@pytest.mark.parametrize('max_keep', [1, 2])
def test_a_run_killed_while_saving_resumes_from_the_previous_checkpoint(tmp_path, tiny_data, monkeypatch, max_keep):
    train = load_tool('train')
    monkeypatch.setenv('LOCAL_RANK', '0')
    work_dir = tmp_path / 'run'
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_data, extra=_CHECKPOINT_EVERY_ITER.format(
        max_iters=3, max_keep=max_keep))
    partial = tmp_path / 'partial'
    stop_writing(monkeypatch, 'iter_3.pth', SimulatedKill(), limit=5000, keep_partial=partial)
    with pytest.raises(SimulatedKill):
        _train(train, config, work_dir, 'killed')
    leftover = work_dir / f'.iter_3.pth.tmp-{os.getpid()}'
    partial.rename(leftover)  # what the kill leaves behind

    kept = sorted(path.name for path in work_dir.glob('iter_*.pth'))
    assert kept == (['iter_2.pth'] if max_keep == 1 else ['iter_1.pth', 'iter_2.pth'])
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_2.pth')
    assert load_checkpoint_file(str(work_dir / 'iter_2.pth'))['meta']['iter'] == 2

    monkeypatch.undo()
    monkeypatch.setenv('LOCAL_RANK', '0')
    resumed = _record_resumes(monkeypatch)
    assert _train(train, config, work_dir, 'resumed', '--resume') == 0
    assert resumed == [str(work_dir / 'iter_2.pth')]
    assert load_checkpoint_file(str(work_dir / 'iter_3.pth'))['meta']['iter'] == 3
    kept = sorted(path.name for path in work_dir.glob('iter_*.pth'))
    assert kept == (['iter_3.pth'] if max_keep == 1 else ['iter_2.pth', 'iter_3.pth'])
    assert temporary_files(work_dir) == []


def test_a_full_disk_stops_training_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, tiny_data, monkeypatch,
                                                                                    capsys):
    train = load_tool('train')
    monkeypatch.setenv('LOCAL_RANK', '0')
    work_dir = tmp_path / 'run'
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_data, extra=_CHECKPOINT_EVERY_ITER.format(
        max_iters=3, max_keep=1))
    stop_writing(monkeypatch, 'iter_3.pth', OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert _train(train, config, work_dir, 'full') == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[-1].startswith(f'error: no space left on the device of {work_dir}: saving iter_3.pth needs ')
    assert sorted(path.name for path in work_dir.glob('iter_*.pth')) == ['iter_2.pth']
    assert temporary_files(work_dir) == []
    assert find_resumable_checkpoint(str(work_dir))[:2] == (str(work_dir / 'iter_2.pth'), [])


def test_an_explicit_resume_of_a_damaged_file_is_refused(tmp_path, tiny_data, monkeypatch, capsys):
    train = load_tool('train')
    monkeypatch.setenv('LOCAL_RANK', '0')
    work_dir = _work_dir_with(tmp_path)
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_data)
    assert _train(train, config, tmp_path / 'new', 'explicit', '--resume', str(work_dir / 'iter_3.pth')) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f'error: damaged checkpoint {work_dir / "iter_3.pth"}: ')
    assert line.endswith('`--resume` without a path continues from the newest intact checkpoint in the work dir')
