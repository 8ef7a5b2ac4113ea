"""tools/dist_train.sh: two CPU processes (gloo) train in lockstep and end with the same weights."""
import os
import socket

import pytest
import torch


from mmseg_ext.checkpoint.safe_unpickler import load_checkpoint_file
from utils import REPO, run_tool, write_tiny_config

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_two_processes_finish_with_identical_weights(tiny_data, tmp_path):
    extra = ("custom_imports = dict(imports=['rank_weights_hook'], allow_failed_imports=False)\n"
             "custom_hooks = [dict(type='SaveRankParametersHook')]\n")
    config = write_tiny_config(tmp_path / 'dist.py', tiny_data, max_iters=3, extra=extra)
    env = {'PORT': str(_free_port()), 'PYTHON': os.environ.get('PYTHON', __import__('sys').executable),
           'PYTHONPATH': str(REPO / 'tests'), 'OMP_NUM_THREADS': '1'}
    proc = run_tool(['dist_train.sh', config, 2, '--work-dir', tmp_path / 'run'], cwd=tmp_path, env_extra=env,
                    timeout=600)
    log = proc.stdout + proc.stderr
    assert 'using the gloo backend' in log
    rank0 = torch.load(tmp_path / 'run' / 'rank0_params.pt', weights_only=True)
    rank1 = torch.load(tmp_path / 'run' / 'rank1_params.pt', weights_only=True)
    assert rank0['world_size'] == rank1['world_size'] == 2
    assert rank0['params'].keys() == rank1['params'].keys() and rank0['params']
    for name, value in rank0['params'].items():
        assert torch.equal(value, rank1['params'][name]), name
    # Training changed them: the ranks agree on updated weights, not merely on the initialisation.
    assert (tmp_path / 'run' / 'iter_2.pth').is_file()
    initial = load_checkpoint_file(str(tmp_path / 'run' / 'iter_2.pth'))['state_dict']
    assert any(not torch.equal(initial[name], value) for name, value in rank0['params'].items() if name in initial)
