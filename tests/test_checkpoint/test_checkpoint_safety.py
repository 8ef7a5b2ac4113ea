"""Checkpoint loading on torch >= 2.6: runner checkpoints load, pickled code never runs."""
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

import mmseg_ext  # noqa: F401  (installs the safe loader)
from mmseg_ext.checkpoint.safe_unpickler import UnsafeCheckpointError, load_checkpoint_file


class RunsCommand:
    """A pickle payload: unpickling it would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


class ReachesFunctionGlobals:
    """A payload that walks from an allowed class to a function through builtins.getattr."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


def test_runner_checkpoint_needs_more_than_torch_defaults(trained_run):
    # Guards the meaning of the next test: plain weights_only loading refuses runner checkpoints.
    _, work_dir, _ = trained_run
    with pytest.raises(pickle.UnpicklingError):
        torch.load(work_dir / 'iter_4.pth', weights_only=True)


def test_runner_checkpoint_loads_through_mmengine(trained_run):
    _, work_dir, _ = trained_run
    checkpoint = _load_checkpoint(str(work_dir / 'iter_4.pth'), map_location='cpu')
    assert set(checkpoint) >= {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'}
    assert checkpoint['meta']['iter'] == 4
    scalars = checkpoint['message_hub']['log_scalars']
    assert isinstance(scalars['train/loss'], HistoryBuffer)
    assert np.isfinite(scalars['train/loss'].current())


def test_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'hostile.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': RunsCommand(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r'refused to load .*hostile\.pth.*system'):
        _load_checkpoint(str(path), map_location='cpu')
    assert not marker.exists()


def test_getattr_cannot_reach_functions(tmp_path):
    path = tmp_path / 'getattr.pth'
    torch.save({'meta': ReachesFunctionGlobals()}, path)
    with pytest.raises(UnsafeCheckpointError, match="attribute '__init__'"):
        load_checkpoint_file(str(path))


def test_model_zoo_layout_loads(tmp_path):
    path = tmp_path / 'zoo.pth'
    state = OrderedDict(weight=torch.randn(3, 3), bias=torch.randn(3))
    torch.save({'meta': {'CLASSES': ('road', 'car'), 'epoch': 3, 'lr': 0.01}, 'state_dict': state}, path)
    checkpoint = _load_checkpoint(str(path), map_location='cpu')
    assert torch.equal(checkpoint['state_dict']['weight'], state['weight'])
    assert checkpoint['meta']['CLASSES'] == ('road', 'car')


def test_numpy_values_load(tmp_path):
    path = tmp_path / 'numpy.pth'
    meta = {'array': np.arange(6, dtype=np.int16).reshape(2, 3), 'scalar': np.float32(0.5), 'dtype': np.dtype('f8')}
    torch.save({'meta': meta}, path)
    loaded = load_checkpoint_file(str(path))['meta']
    assert np.array_equal(loaded['array'], meta['array']) and loaded['array'].dtype == np.int16
    assert loaded['scalar'] == np.float32(0.5) and loaded['dtype'] == np.dtype('f8')


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        _load_checkpoint(str(tmp_path / 'nowhere.pth'))
