"""tools/speed_sharing.py: demo training speed alone and beside a second job, per OpenMP wait policy."""
import json

import pytest

from utils import REPO, load_tool, run_tool

speed_sharing = load_tool('speed_sharing')


def test_each_policy_replaces_the_openmp_settings_of_the_environment(monkeypatch):
    monkeypatch.setenv('OMP_WAIT_POLICY', 'ACTIVE')
    monkeypatch.setenv('GOMP_SPINCOUNT', '5')
    assert 'OMP_WAIT_POLICY' not in speed_sharing.clean_environment('tool default')
    assert 'GOMP_SPINCOUNT' not in speed_sharing.clean_environment('tool default')
    assert speed_sharing.clean_environment('spin 10k')['GOMP_SPINCOUNT'] == '10000'


def test_iterations_must_outnumber_the_skipped_ones(capsys):
    with pytest.raises(SystemExit):
        speed_sharing.parse_args(['--iters', '3', '--skip', '3'])
    assert '--iters (3) must exceed --skip (3)' in capsys.readouterr().err


@pytest.mark.slow
def test_measures_alone_and_beside_a_second_job(tiny_data, tmp_path):
    out = tmp_path / 'sharing.json'
    proc = run_tool(['speed_sharing.py', '--data-root', tiny_data, '--iters', 3, '--skip', 1, '--rounds', 1,
                     '--policies', 'tool default', '--json', out], cwd=REPO, timeout=600)
    assert '| tool default |' in proc.stdout
    results = json.loads(out.read_text())['results']['tool default']
    assert len(results['alone']) == len(results['beside']) == 1
    assert all(seconds > 0 for seconds in results['alone'] + results['beside'])
