"""Shared fixtures: a tiny generated Cityscapes-layout dataset and a short training run on it (helpers: utils.py)."""
from pathlib import Path

import pytest
import torch

from utils import REPO, run_tool, write_tiny_config

# Tests also start tool subprocesses; two OpenMP threads per process on two shared cores stall on
# descheduled threads, so every test process uses one.
torch.set_num_threads(1)


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory) -> Path:
    """A generated Cityscapes-layout dataset: 8 train and 4 val scenes of 64x128."""
    root = tmp_path_factory.mktemp('data') / 'cityscapes'
    run_tool(['dataset_converters/make_demo_data.py', root, '--train', 8, '--val', 4, '--height', 64, '--width', 128],
             cwd=REPO)
    return root


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, tiny_data):
    """A 4-iteration training run of the tiny config; returns (config, work_dir, stdout+stderr)."""
    work = tmp_path_factory.mktemp('trained')
    config = write_tiny_config(work / 'tiny.py', tiny_data)
    proc = run_tool(['train.py', config, '--work-dir', work / 'run'], cwd=work)
    return config, work / 'run', proc.stdout + proc.stderr
