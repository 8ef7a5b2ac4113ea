"""tools/benchmark.py and mmseg_ext.benchmarking: counterparts, timing statistics, the CLI's numbers."""
import json
import time

import pytest
import torch


from mmseg_ext.benchmarking import Timing, peak_memory_mb, time_alternating, to_mmseg_config
from utils import REPO, run_tool

ERFNET_CONFIG = REPO / 'configs' / 'erfnet' / 'erfnet_fcn_4xb4-160k_cityscapes-512x1024.py'


def test_counterpart_strips_the_scope_and_resolves_mit_arch():
    cfg = dict(type='EncoderDecoder', backbone=dict(type='mmseg_ext.MixVisionTransformer', arch='b0'),
               decode_head=dict(type='mmseg_ext.SegformerHead', in_channels=[32, 64, 160, 256], channels=256,
                                num_classes=19, head_style='mmseg'))
    mmseg_cfg = to_mmseg_config(cfg)
    assert mmseg_cfg['backbone']['type'] == 'MixVisionTransformer' and 'arch' not in mmseg_cfg['backbone']
    assert mmseg_cfg['backbone']['embed_dims'] == 32 and mmseg_cfg['backbone']['num_layers'] == [2, 2, 2, 2]
    assert mmseg_cfg['decode_head']['type'] == 'SegformerHead' and 'head_style' not in mmseg_cfg['decode_head']
    assert cfg['backbone']['arch'] == 'b0'  # the input is not modified


@pytest.mark.parametrize('cfg, message', [
    (dict(type='mmseg_ext.ERFNetHead', in_channels=16, num_classes=19), 'ERFNetHead has no mmseg counterpart'),
    (dict(type='mmseg_ext.SegformerHead', in_channels=[8] * 4, channels=8, num_classes=2, head_style='official'),
     "sets head_style='official'"),
])
def test_models_without_counterpart_are_refused(cfg, message):
    with pytest.raises(ValueError, match=message):
        to_mmseg_config(cfg)


def test_timing_statistics_and_alternation():
    order = []
    timings = time_alternating({'a': lambda: order.append('a'), 'b': lambda: order.append('b')}, repeats=3, warmup=1)
    assert order == ['a', 'b', 'a', 'b', 'b', 'a', 'a', 'b']  # warm-up, then the order rotates each round
    assert all(len(t.seconds) == len(t.user_seconds) == len(t.system_seconds) == 3 for t in timings.values())
    timing = Timing([0.3, 0.1, 0.2, 0.5, 0.4])
    assert timing.median == 0.3 and timing.p90 == 0.5


def test_timing_records_the_cpu_time_of_the_call():
    def busy():
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass
    timing = time_alternating({'busy': busy}, repeats=1, warmup=0)['busy']
    assert timing.seconds[0] >= 0.2 and timing.user_seconds[0] + timing.system_seconds[0] >= 0.1


def test_cpu_peak_memory_sees_a_large_allocation():
    def allocate():
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        return block.sum()
    assert 60 <= peak_memory_mb(allocate, torch.device('cpu')) <= 200


@pytest.mark.slow
def test_cli_compares_with_mmseg_and_writes_json(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_tool(['benchmark.py', ERFNET_CONFIG, '--shape', 64, 128, '--repeats', 2, '--warmup', 1,
                     '--fuse-conv-bn', '--channels-last', '--compare-mmseg', '--json', out], cwd=tmp_path)
    assert '| mmseg_ext (fuse_conv_bn, channels_last) |' in proc.stdout and '| mmseg |' in proc.stdout
    result = json.loads(out.read_text())
    ours, theirs = result['results']['mmseg_ext (fuse_conv_bn, channels_last)'], result['results']['mmseg']
    assert result['shape'] == [64, 128] and len(ours['seconds']) == 2
    assert 2.0 < theirs['params_m'] < 2.2  # ERFNet + FCN head: 2.1 M
    assert ours['gflops'] == theirs['gflops'] > 0
    assert result['comparison']['max_abs_diff'] < 1e-3
    assert result['comparison']['speedup'] == pytest.approx(theirs['median_s'] / ours['median_s'])

    table = run_tool(['benchmark_table.py', out, '--out', tmp_path / 'table.md'], cwd=tmp_path).stdout
    expected = f"**{result['comparison']['speedup']:.2f}x**"
    assert '| erfnet_fcn_4xb4-160k_cityscapes-512x1024 | 64x128 whole | 2.1 |' in table and expected in table
    assert (tmp_path / 'table.md').read_text().strip() == table.strip()


@pytest.mark.slow
def test_cli_slide_mode_counts_windows(tmp_path):
    out = tmp_path / 'slide.json'
    run_tool(['benchmark.py', ERFNET_CONFIG, '--shape', 96, 160, '--mode', 'slide', '--crop', 64, 64, '--stride',
              48, 48, '--repeats', 1, '--warmup', 0, '--json', out], cwd=tmp_path)
    whole = tmp_path / 'whole.json'
    run_tool(['benchmark.py', ERFNET_CONFIG, '--shape', 64, 64, '--repeats', 1, '--warmup', 0, '--json', whole],
             cwd=tmp_path)
    slide_flops = json.loads(out.read_text())['results']['mmseg_ext']['gflops']
    window_flops = json.loads(whole.read_text())['results']['mmseg_ext']['gflops']
    assert slide_flops == pytest.approx(2 * 3 * window_flops)  # 2 rows x 3 columns of 64x64 windows


def test_bad_arguments(tmp_path):
    proc = run_tool(['benchmark.py', tmp_path / 'none.py'], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2 and 'config file not found' in proc.stderr
    proc = run_tool(['benchmark.py', ERFNET_CONFIG, '--repeats', 0], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2 and '--repeats must be at least 1, got 0' in proc.stderr


def test_models_build_without_their_pretrained_weights():
    import sys
    sys.path.insert(0, str(REPO / 'tools'))
    from benchmark import build_segmentor
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    cfg = Config.fromfile(str(REPO / 'configs/ocrnet/ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py'))
    assert cfg.model.pretrained  # mmseg's recipe names ImageNet weights that cannot be downloaded here
    model_cfg = cfg.model.to_dict()
    for _ in range(2):  # plugin model, then mmseg's counterpart from the same config
        init_cfg = build_segmentor(model_cfg).backbone.init_cfg or []
        init_cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
        assert all(entry['type'] != 'Pretrained' for entry in init_cfgs), init_cfgs
    assert model_cfg['pretrained'] == cfg.model.pretrained and 'pretrained' not in model_cfg['backbone']
