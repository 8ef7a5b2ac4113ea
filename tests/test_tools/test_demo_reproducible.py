"""`make demo` is reproducible: the demo recipe, run twice on one machine, trains to the same weights.

The demo configs seed Python, numpy, torch and the dataloader workers (``randomness`` in
configs/_demo_/demo_dataset.py). CPU kernels are deterministic for a fixed thread count, so two runs with
the same threads must agree bit for bit; a change that unseeds an augmentation or adds a
non-deterministic kernel fails here long before it moves the demo's mIoU.
"""
from pathlib import Path

import pytest
import torch
from utils import REPO, run_tool



pytestmark = pytest.mark.slow


def _train_demo_recipe(data_root: Path, work_dir: Path) -> dict:
    """Three iterations of the default demo config (its pipeline, workers, optimiser) on ``data_root``."""
    loaders = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    run_tool(['train.py', REPO / 'configs' / '_demo_' / 'erfnet.py', '--work-dir', work_dir, '--cfg-options',
              'train_cfg.max_iters=3', 'train_cfg.val_interval=100', 'train_dataloader.batch_size=2',
              *[f'{loader}.dataset.data_root={data_root}' for loader in loaders]],
             cwd=work_dir.parent, env_extra={'OMP_NUM_THREADS': '2', 'MKL_NUM_THREADS': '2'})
    from mmseg_ext.checkpoint.safe_unpickler import load_checkpoint_file
    return load_checkpoint_file(str(work_dir / 'iter_3.pth'))['state_dict']


def test_two_runs_of_the_demo_recipe_train_identical_weights(tiny_data, tmp_path):
    first = _train_demo_recipe(tiny_data, tmp_path / 'first')
    second = _train_demo_recipe(tiny_data, tmp_path / 'second')
    assert first.keys() == second.keys()
    differing = [key for key in first if not torch.equal(first[key], second[key])]
    assert not differing, f'{len(differing)} tensors differ between two identical demo runs, e.g. {differing[:3]}'
    # The runs trained (a test of equal untouched weights would prove nothing).
    initial_bn_mean = [key for key in first if key.endswith('running_mean')]
    assert any(first[key].abs().sum() > 0 for key in initial_bn_mean)
