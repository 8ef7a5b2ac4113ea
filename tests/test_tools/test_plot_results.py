"""tools/analysis_tools/plot_results.py: published figures plus runs read from work dirs, PNG or SVG by suffix."""
import csv

import pytest
from utils import REPO, run_tool



DATA = REPO / 'docs' / 'published_cityscapes.csv'


def _rows():
    with open(DATA, newline='') as file:
        return list(csv.DictReader(file))


def test_data_file_has_sources_and_sane_values():
    rows = _rows()
    assert len(rows) >= 15
    for row in rows:
        assert row['source'].strip(), row['model']
        assert 0.5 < float(row['params_m']) < 200 and 60 < float(row['miou']) < 90
        assert row['params_verified'] in ('yes', 'no')


@pytest.mark.slow
def test_png_with_own_runs_and_svg_with_unverified(trained_run, tmp_path):
    _, work_dir, _ = trained_run
    verified = sum(row['params_verified'] == 'yes' for row in _rows())
    png = run_tool(['analysis_tools/plot_results.py', '--out', tmp_path / 'chart.png', '--work-dirs', work_dir.parent],
                   cwd=REPO)
    assert f'[plot] {verified} published and 1 own results' in png.stdout
    assert (tmp_path / 'chart.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    svg = run_tool(['analysis_tools/plot_results.py', '--out', tmp_path / 'chart.svg', '--include-unverified'],
                   cwd=REPO)
    assert f'[plot] {len(_rows())} published and 0 own results' in svg.stdout
    assert b'<svg' in (tmp_path / 'chart.svg').read_bytes()[:500]


def test_unknown_suffix_is_refused(tmp_path):
    proc = run_tool(['analysis_tools/plot_results.py', '--out', tmp_path / 'chart.jpg'], cwd=REPO, expect_ok=False)
    assert proc.returncode == 2 and '--out must end in .png or .svg' in proc.stderr
