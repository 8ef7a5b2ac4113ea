"""tools/analysis_tools/benchmark.py and mmseg_ext.benchmark: counterparts, FLOPs, variants, tasks, allocators,
the CLI."""
import json
import sys
import time
from typing import Optional, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmseg_ext.benchmark import (ALLOCATORS, Timing, VariantContext, allocator_environment, build_variant,
                                 count_flops, current_allocator, inference_runner, median, parse_variant,
                                 peak_memory_mb, randomize_batch_norms, time_alternating, to_mmseg_config,
                                 train_step_runner)
from mmseg_ext.benchmark.roofline import PRECISIONS, RoofShapes, annotate_rows, measure_roof, variant_precision
from mmseg_ext.builder import build_segmentor
from utils import REPO, load_tool, run_tool

BENCHMARK = 'analysis_tools/benchmark.py'  # relative to tools/, as run_tool takes it
ERFNET_CONFIG = REPO / 'configs' / 'erfnet' / 'erfnet_fcn_4xb4-160k_cityscapes-512x1024.py'
B0_CONFIG = REPO / 'configs' / 'segformer' / 'segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py'
HR18S_CONFIG = REPO / 'configs' / 'ocrnet' / 'ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py'


def load_model(config):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    cfg = Config.fromfile(str(config))
    model = build_segmentor(cfg.model)
    randomize_batch_norms(model)
    return cfg, model.eval()


# ---------------------------------------------------------------------------------------------- counterparts


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


def test_models_build_without_their_pretrained_weights_and_with_plain_batch_norms():
    from mmengine.config import Config
    cfg = Config.fromfile(str(HR18S_CONFIG))
    assert cfg.model.pretrained  # mmseg's recipe names ImageNet weights that cannot be downloaded here
    model_cfg = cfg.model.to_dict()
    for _ in range(2):  # plugin model, then mmseg's counterpart from the same config
        model = build_segmentor(model_cfg)
        init_cfg = model.backbone.init_cfg or []
        init_cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
        assert all(entry['type'] != 'Pretrained' for entry in init_cfgs), init_cfgs
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())  # as mmseg's runner, 1 process
    assert model_cfg['pretrained'] == cfg.model.pretrained and 'pretrained' not in model_cfg['backbone']


# ---------------------------------------------------------------------------------------------- FLOPs


class Attend(nn.Module):

    def forward(self, query, key, value):
        return F.scaled_dot_product_attention(query, key, value)


def test_sdpa_counts_both_attention_products():
    query, key, value = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 5)

    class Wrapper(nn.Module):  # count_flops passes one input

        def forward(self, x):
            return Attend()(x, key, value)

    count = count_flops(Wrapper(), query)
    assert count.total == 2 * 3 * 10 * 6 * (8 + 5)  # q k^T: 10x6 dot products of 8; p v: 10x5 of 6
    assert count.by_operator == {'scaled_dot_product_attention': count.total}


@pytest.mark.parametrize('train', [False, True])
def test_multi_head_attention_counts_the_same_fused_or_not(train):
    """Eval mode takes the fused ``_native_multi_head_attention``; train mode the linear + bmm path."""
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 2, batch_first=True).train(train)

    class SelfAttention(nn.Module):

        def __init__(self):
            super().__init__()
            self.attention = attention

        def forward(self, x):
            return self.attention(x, x, x)[0]

    count = count_flops(SelfAttention(), torch.randn(1, 10, 16))
    expected_op = 'bmm' if train else '_native_multi_head_attention'
    assert expected_op in count.by_operator, count.by_operator
    projections = 10 * 16 * 3 * 16 + 10 * 16 * 16  # q, k, v in; out
    products = 2 * (10 * 10 * 16)  # q k^T and p v over both heads of 8 channels
    assert count.total == projections + products


def test_baddbmm_counts_the_product():

    class Masked(nn.Module):

        def forward(self, x):
            return torch.baddbmm(torch.zeros(4, 7, 9), x, torch.ones(4, 5, 9))

    assert count_flops(Masked(), torch.randn(4, 7, 5)).total == 4 * 7 * 5 * 9


def test_plugin_and_mmseg_mit_count_the_same_with_attention():
    from mmseg.models.backbones import MixVisionTransformer as MmsegMiT

    from mmseg_ext.models.backbones.mit import MIT_ARCH_SETTINGS, MixVisionTransformer
    reference = MmsegMiT(**MIT_ARCH_SETTINGS['b0']).eval()
    plugin = MixVisionTransformer(arch='b0').eval()
    images = torch.randn(1, 3, 64, 96)
    ours, theirs = count_flops(plugin, images), count_flops(reference, images)
    assert ours.total == theirs.total
    assert ours.by_operator['scaled_dot_product_attention'] > 0
    # Stage 1 alone: 16x24 queries attend to 2x3 reduced keys of 32 channels, q k^T and p v, two blocks.
    assert ours.by_operator['scaled_dot_product_attention'] >= 2 * 384 * 6 * 64


def test_plugin_and_mmseg_segformer_head_count_the_same():
    """The plugin's head accumulates its fusion block by block (in-place matrix products): same count."""
    from mmseg.models.decode_heads import SegformerHead as MmsegSegformerHead

    from mmseg_ext.models.decode_heads.segformer_head import SegformerHead
    head_cfg = dict(in_channels=[8, 16, 24, 32], in_index=[0, 1, 2, 3], channels=16, num_classes=5,
                    norm_cfg=dict(type='BN', requires_grad=True))
    torch.manual_seed(0)
    plugin, reference = SegformerHead(**head_cfg).eval(), MmsegSegformerHead(**head_cfg).eval()
    inputs = [torch.randn(1, c, 32 // 2**i, 48 // 2**i) for i, c in enumerate(head_cfg['in_channels'])]

    class Head(nn.Module):

        def __init__(self, head: nn.Module) -> None:
            super().__init__()
            self.head = head

        def forward(self, features: Tuple[Tensor, ...]) -> Tensor:
            return self.head(list(features))

    ours, theirs = count_flops(Head(plugin), tuple(inputs)), count_flops(Head(reference), tuple(inputs))
    assert ours.total == theirs.total
    # The fusion alone: 4 x 16 input channels to 16 at 32x48 pixels.
    assert ours.total > 4 * 16 * 16 * 32 * 48


def test_ocr_head_products_are_counted():
    """Neither OCR head leaves a matrix product uncounted (the plugin's does less work in eval mode:
    its inference shortcut projects the region values instead of every pixel)."""
    _, plugin = load_model(HR18S_CONFIG)
    cfg, _ = load_model(HR18S_CONFIG)
    mmseg = VariantContext(plugin, cfg.model.to_dict(), torch.device('cpu')).mmseg_counterpart()
    images = torch.randn(1, 3, 64, 128)
    products = {'matmul', 'bmm', 'einsum', 'scaled_dot_product_attention', 'baddbmm'}
    for model in (plugin, mmseg):
        count = count_flops(model, images)
        assert not products & {op.replace('aten::', '') for op in count.not_counted}, count.not_counted
    assert count_flops(plugin, images).total < count_flops(mmseg, images).total


@pytest.mark.slow
def test_segformer_b0_at_1024x2048_counts_the_papers_flops():
    """The paper's Table 1 gives SegFormer-B0 125.5 GFLOPs on a 1024x2048 Cityscapes image."""
    _, model = load_model(B0_CONFIG)
    gflops = count_flops(model, torch.randn(1, 3, 1024, 2048)).gflops
    assert abs(gflops - 125.5) / 125.5 < 0.05, gflops


# ---------------------------------------------------------------------------------------------- variants


def test_variant_names():
    assert parse_variant('folded+channels-last') == ['configured', 'folded', 'channels-last']
    assert parse_variant('mmseg+compiled') == ['mmseg', 'compiled']
    with pytest.raises(ValueError, match=r"unknown step\(s\) \['fast'\]"):
        parse_variant('folded+fast')
    with pytest.raises(ValueError, match="'mmseg' builds a model from scratch"):
        parse_variant('folded+mmseg')


def test_variants_compute_the_same_logits_and_keep_the_original():
    cfg, plugin = load_model(ERFNET_CONFIG)
    context = VariantContext(plugin, cfg.model.to_dict(), torch.device('cpu'))
    images = torch.randn(1, 3, 64, 128)
    outputs = {}
    for name in ('mmseg', 'configured', 'folded', 'folded+channels-last'):
        subject = build_variant(name, context)
        outputs[name] = inference_runner(subject, images)()
        if name.endswith('channels-last'):
            assert subject.memory_format == torch.channels_last
    for name, logits in outputs.items():
        assert logits.shape == (1, 19, 32, 64)  # the network's output: half resolution
        assert (logits - outputs['mmseg']).abs().max() < 1e-4, name
    assert any(isinstance(m, nn.BatchNorm2d) for m in plugin.modules())  # variants work on copies


def test_train_step_updates_the_weights_and_refuses_folded_models():
    cfg, plugin = load_model(ERFNET_CONFIG)
    context = VariantContext(plugin, cfg.model.to_dict(), torch.device('cpu'))
    images, labels = torch.randn(1, 3, 32, 64), torch.randint(0, 19, (1, 32, 64))
    subject = build_variant('mmseg', context)
    before = {name: p.detach().clone() for name, p in subject.module.named_parameters()}
    loss = train_step_runner(subject, images, labels, cfg.optim_wrapper)()
    assert loss.ndim == 0 and torch.isfinite(loss)
    changed = [name for name, p in subject.module.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) > len(before) // 2
    with pytest.raises(ValueError, match='cannot be trained'):
        train_step_runner(build_variant('folded', context), images, labels, cfg.optim_wrapper)


# ---------------------------------------------------------------------------------------------- timing, memory


def test_timing_statistics_and_alternation():
    order = []
    timings = time_alternating({'a': lambda: order.append('a'), 'b': lambda: order.append('b')}, repeats=3, warmup=1)
    assert order == ['a', 'b', 'a', 'b', 'b', 'a', 'a', 'b']  # warm-up, then the order rotates each round
    assert all(len(t.seconds) == len(t.user_seconds) == len(t.system_seconds) == 3 for t in timings.values())
    assert all(len(t.warmup_seconds) == 1 for t in timings.values())
    timing = Timing([0.3, 0.1, 0.2, 0.5, 0.4])
    assert timing.median == 0.3 and timing.p90 == 0.5
    assert median([0.4, 0.1, 0.2, 0.3]) == pytest.approx(0.25)  # the benchmark's one median, user and system time too


def test_timing_records_the_cpu_time_of_the_call():
    def busy():  # 0.2 s of this process's CPU time, however long a busy machine makes it take
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass
    timing = time_alternating({'busy': busy}, repeats=1, warmup=0)['busy']
    cpu = timing.user_seconds[0] + timing.system_seconds[0]
    assert cpu >= 0.15 and timing.seconds[0] >= 0.9 * cpu  # os.times ticks are 10 ms


def test_cpu_peak_memory_sees_a_large_allocation():
    def allocate():
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        return block.sum()
    assert 60 <= peak_memory_mb(allocate, torch.device('cpu')) <= 200


def test_allocator_environments():
    env = allocator_environment('tuned', base={'PATH': '/bin', 'MALLOC_TOP_PAD_': '1'})
    assert env['PATH'] == '/bin' and env['MALLOC_TOP_PAD_'] == ALLOCATORS['tuned']['MALLOC_TOP_PAD_']
    assert current_allocator(env) == 'tuned'
    assert current_allocator(allocator_environment('default', base=env)) == 'default'
    assert current_allocator({'MALLOC_ARENA_MAX': '2'}) is None
    with pytest.raises(ValueError, match="allocator 'jemalloc' is not one of default, tuned"):
        allocator_environment('jemalloc')


# ---------------------------------------------------------------------------------------------- the CLI


def test_cli_variants_side_by_side_and_the_tables(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_tool([BENCHMARK, ERFNET_CONFIG, '--shape', 64, 128, '--repeats', 2, '--warmup', 1,
                     '--variants', 'mmseg', 'configured', 'folded+channels-last', '--no-roof', '--json', out],
                    cwd=tmp_path)
    assert '| folded+channels-last |' in proc.stdout and '| mmseg |' in proc.stdout
    assert 'roof: not measured (--no-roof)' in proc.stdout
    assert 'round 3/3 (timed)' in proc.stderr  # a progress line per round
    result = json.loads(out.read_text())
    (condition, ) = result['conditions']
    assert condition['allocator'] == 'default' and condition['baseline'] == 'mmseg'
    ours, theirs = condition['results']['folded+channels-last'], condition['results']['mmseg']
    assert result['shape'] == [64, 128] and len(ours['seconds']) == 2 and len(ours['warmup_seconds']) == 1
    assert 2.0 < theirs['params_m'] < 2.2  # ERFNet + FCN head: 2.1 M
    # Each side's own count: mmseg's downsamplers add a resize to the size they already have, which the
    # plugin skips (mmengine counts resizes), so the plugin's is a little lower.
    assert theirs['gflops'] > ours['gflops'] > 0.999 * theirs['gflops']
    flops = result['conditions'][0]['flops']
    assert flops['mmseg']['by_operator']['conv'] == flops['configured']['by_operator']['conv']
    assert ours['max_abs_diff'] < 1e-3 and theirs['max_abs_diff'] == 0
    assert ours['speedup'] == pytest.approx(theirs['median_s'] / ours['median_s'])
    assert result['roof'] is None and ours['roof_fraction'] is None and ours['precision'] == 'float32'
    assert ours['achieved_gmacs'] == pytest.approx(ours['gflops'] / ours['median_s'])

    table = run_tool(['analysis_tools/benchmark_table.py', out, '--out', tmp_path / 'all.md',
                      '--family-dir', tmp_path / 'bench'], cwd=tmp_path).stdout
    expected = f"| erfnet_fcn_4xb4-160k_cityscapes-512x1024 | inference | 64x128 whole | default | " \
               f"folded+channels-last | {ours['gflops']:.1f} | {1000 * ours['median_s']:.0f} | 2 | " \
               f"**{ours['speedup']:.2f}x** | {ours['achieved_gmacs']:.1f} | - |"
    assert expected in table and 'multiply-adds counted once' in table
    assert (tmp_path / 'all.md').read_text() == table
    assert expected in (tmp_path / 'bench' / 'erfnet.md').read_text()


def test_cli_without_flops_leaves_the_count_out(tmp_path):
    out = tmp_path / 'no_flops.json'
    run_tool([BENCHMARK, ERFNET_CONFIG, '--shape', 32, 64, '--repeats', 1, '--warmup', 0, '--no-flops',
              '--no-roof', '--variants', 'mmseg', 'folded+channels-last', '--json', out], cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result['variants'] == ['mmseg', 'folded+channels-last']
    assert result['conditions'][0]['results']['mmseg']['gflops'] is None


def test_cli_train_step_under_both_allocators(tmp_path):
    out = tmp_path / 'train.json'
    proc = run_tool([BENCHMARK, ERFNET_CONFIG, '--task', 'train-step', '--shape', 32, 64, '--repeats', 1,
                     '--warmup', 1, '--variants', 'mmseg', 'channels-last', '--no-roof', '--json', out],
                    cwd=tmp_path, env_extra={'MALLOC_TOP_PAD_': '12345'})
    result = json.loads(out.read_text())
    assert [c['allocator'] for c in result['conditions']] == ['default', 'tuned']  # each in a fresh process
    for condition in result['conditions']:
        assert set(condition['results']) == {'mmseg', 'channels-last'}
        assert all(row['peak_memory_mb'] > 0 and row['max_abs_diff'] is None for row in condition['results'].values())
        # Only the forward's multiply-adds are counted, so a training step has no rate.
        assert all(row['achieved_gmacs'] is None for row in condition['results'].values())
    assert 'allocator: default' in proc.stdout and 'allocator: tuned' in proc.stdout
    flops = [condition['results']['mmseg']['gflops'] for condition in result['conditions']]
    assert flops[0] == flops[1] > 0  # counted once, in the first process


def test_cli_slide_mode_counts_windows(tmp_path):
    out = tmp_path / 'slide.json'
    run_tool([BENCHMARK, ERFNET_CONFIG, '--shape', 96, 160, '--mode', 'slide', '--crop', 64, 64, '--stride',
              48, 48, '--repeats', 1, '--warmup', 0, '--no-roof', '--json', out], cwd=tmp_path)
    whole = tmp_path / 'whole.json'
    run_tool([BENCHMARK, ERFNET_CONFIG, '--shape', 64, 64, '--repeats', 1, '--warmup', 0, '--no-roof', '--json',
              whole], cwd=tmp_path)
    slide_flops = json.loads(out.read_text())['conditions'][0]['results']['configured']['gflops']
    window_flops = json.loads(whole.read_text())['conditions'][0]['results']['configured']['gflops']
    assert slide_flops == pytest.approx(2 * 3 * window_flops)  # 2 rows x 3 columns of 64x64 windows


@pytest.mark.slow
def test_cli_compiled_variant(tmp_path):
    out = tmp_path / 'compiled.json'
    run_tool([BENCHMARK, ERFNET_CONFIG, '--shape', 32, 64, '--repeats', 1, '--warmup', 1, '--no-flops',
              '--no-roof', '--variants', 'mmseg', 'compiled', '--json', out], cwd=tmp_path, timeout=600)
    rows = json.loads(out.read_text())['conditions'][0]['results']
    assert rows['compiled']['max_abs_diff'] < 1e-4
    assert rows['compiled']['warmup_seconds'][0] > rows['compiled']['median_s']  # the compilation


def test_bad_arguments(tmp_path):
    proc = run_tool([BENCHMARK, tmp_path / 'none.py'], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2 and 'config file not found' in proc.stderr
    proc = run_tool([BENCHMARK, ERFNET_CONFIG, '--repeats', 0], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2 and '--repeats must be at least 1, got 0' in proc.stderr
    proc = run_tool([BENCHMARK, ERFNET_CONFIG, '--variants', 'folded+turbo'], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2 and "unknown step(s) ['turbo']" in proc.stderr
    proc = run_tool([BENCHMARK, ERFNET_CONFIG, '--variants', 'folded', '--channels-last'], cwd=tmp_path,
                    expect_ok=False)  # the older switches are gone: --variants says it all
    assert proc.returncode == 2 and 'unrecognized arguments: --channels-last' in proc.stderr
    proc = run_tool([BENCHMARK, ERFNET_CONFIG, '--task', 'train-step', '--shape', 32, 32, '--variants', 'folded',
                     '--allocator', 'default', '--no-flops'], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2 and 'cannot be trained' in proc.stderr


def test_strip_options():
    sys.path.insert(0, str(REPO / 'tools' / 'analysis_tools'))
    from benchmark import strip_options
    argv = ['cfg.py', '--allocator', 'both', '--json=x.json', '--repeats', '2']
    assert strip_options(argv, ('--allocator', '--json')) == ['cfg.py', '--repeats', '2']


# ---------------------------------------------------------------------------------------------- exported runtimes


@pytest.mark.parametrize('crop', [(64, 64), (1024, 1024), (64, 200)])
def test_exported_graph_input_slides_the_configured_windows(crop):
    """The static graph of the exported variants is the window the test mode feeds it, ``min(crop, image)``
    per side, and a crop cut to it slides exactly mmseg's windows."""
    from mmseg_ext.benchmark.runtimes import graph_input
    from mmseg_ext.deploy import slide_windows
    stride = (48, 48)
    for shape in [(48, 160), (64, 64), (96, 40), (512, 1024)]:
        window, cut = graph_input(dict(mode='slide', crop_size=crop, stride=stride), shape)
        configured = list(slide_windows(*shape, crop, stride))
        assert list(slide_windows(*shape, cut['crop_size'], cut['stride'])) == configured
        assert {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in configured} == {window}
    assert graph_input(dict(mode='whole'), (50, 70)) == ((50, 70), dict(mode='whole'))


@pytest.mark.parametrize('config, options, variants', [
    (B0_CONFIG, ['--shape', 64, 128], ['onnxruntime']),  # slides 1024x1024 windows: one 64x128 window here
    (ERFNET_CONFIG, ['--shape', 48, 160, '--mode', 'slide', '--crop', 64, 64, '--stride', 48, 48],
     ['onnxruntime', 'openvino']),  # windows of 48x64, the image lower than the crop
], ids=['segformer-b0-config-slide', 'erfnet-slide-48x160'])
def test_exported_variants_run_at_a_shape_other_than_the_crop(config, options, variants, tmp_path):
    out = tmp_path / 'bench.json'
    argv = [config, *options, '--variants', 'mmseg', *variants, '--repeats', 1, '--warmup', 0, '--no-flops',
            '--no-roof', '--allocator', 'default', '--json', out]
    assert load_tool('analysis_tools/benchmark').main([str(arg) for arg in argv]) == 0
    (condition, ) = json.loads(out.read_text())['conditions']
    assert condition['mode'] == 'slide'
    for name in variants:
        assert condition['results'][name]['max_abs_diff'] < 1e-3, name


# ---------------------------------------------------------------------------------------------- the roof

TINY_ROOF = RoofShapes(matmul=64, channels=8, height=8, width=16)


def test_roof_measures_both_kernels_of_every_precision():
    threads = torch.get_num_threads()
    roof = measure_roof(TINY_ROOF, calls=2, min_seconds=0, threads=2)
    assert torch.get_num_threads() == threads  # the process's setting is left as it was
    assert roof['threads'] == 2 and roof['calls'] == 2 and roof['shapes'] == dict(matmul=64, channels=8, height=8,
                                                                                   width=16)
    for precision in PRECISIONS:
        entry = roof[precision]
        assert entry['matmul'] > 0 and entry['conv'] > 0, precision
        assert entry['roof'] == max(entry['matmul'], entry['conv'])
        assert set(entry['kernels']) == {'matmul', 'conv'}
    assert TINY_ROOF.macs('matmul') == 64**3 and TINY_ROOF.macs('conv') == 8 * 8 * 9 * 8 * 16
    with pytest.raises(ValueError, match=r"positive integers, got \{'height': 0\}"):
        RoofShapes(height=0)
    with pytest.raises(ValueError, match='calls=0'):
        measure_roof(TINY_ROOF, calls=0)


def test_variant_precisions():
    assert [variant_precision(name) for name in ('mmseg', 'folded+channels-last+compiled', 'onnxruntime', 'openvino',
                                                 'folded+channels-last+amp', 'folded+bf16', 'openvino-bf16',
                                                 'onnxruntime-int8')] == ['float32'] * 4 + ['bf16'] * 3 + ['int8']


def fake_roof(float32: float, bf16: float, int8: float) -> dict:
    """A roof as :func:`measure_roof` writes it, the convolution at half the product's rate."""
    roof = dict(unit='GMAC/s', threads=2, calls=3, operations=dict(matmul='64x64 @ 64x64', conv='3x3 conv'))
    for precision, rate in zip(PRECISIONS, (float32, bf16, int8)):
        roof[precision] = dict(matmul=rate, conv=rate / 2, roof=rate, kernels=dict(matmul='mm', conv='conv2d'))
    return roof


def test_rows_get_their_rate_and_their_precisions_share():
    roof = fake_roof(10.0, 40.0, 80.0)
    condition = dict(results={'mmseg': dict(gflops=4.0, median_s=0.5), 'amp': dict(gflops=4.0, median_s=0.25),
                              'onnxruntime-int8': dict(gflops=4.0, median_s=0.1),
                              'compiled': dict(gflops=None, median_s=0.2)})
    annotate_rows(condition, roof, 'inference')
    rates = {name: (row['precision'], row['achieved_gmacs'], row['roof_fraction'])
             for name, row in condition['results'].items()}
    assert rates == {'mmseg': ('float32', 8.0, pytest.approx(0.8)), 'amp': ('bf16', 16.0, pytest.approx(0.4)),
                     'onnxruntime-int8': ('int8', 40.0, pytest.approx(0.5)), 'compiled': ('float32', None, None)}
    annotate_rows(condition, None, 'inference')  # no roof: the rate alone
    assert (condition['results']['mmseg']['achieved_gmacs'], condition['results']['mmseg']['roof_fraction']) == (8.0,
                                                                                                                 None)
    annotate_rows(condition, roof, 'train-step')  # only the forward's multiply-adds are counted: no rate
    assert all(row['achieved_gmacs'] is None is row['roof_fraction'] for row in condition['results'].values())


def fake_result(variants: dict, roof: Optional[dict], flops: Optional[dict]) -> dict:
    """A tools/analysis_tools/benchmark.py result of one whole-image ERFNet run at 64x128:
    variant -> (GFLOPs, median s)."""
    results = {}
    for name, (gflops, median_s) in variants.items():
        row = dict(gflops=gflops, median_s=median_s, seconds=[median_s] * 3, warmup_seconds=[1.0], speedup=1.0,
                   peak_memory_mb=10.0, memory_ratio=1.0, max_abs_diff=0.0)
        results[name] = row
    condition = dict(allocator='default', baseline=next(iter(variants)), mode='whole', threads=2, flops=flops,
                     results=results)
    annotate_rows(condition, roof, 'inference')
    return dict(config='configs/erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py', task='inference',
                shape=[64, 128], batch=1, device='cpu', torch='2.13.0', variants=list(variants),
                flop_convention='multiply-adds', roof=roof, conditions=[condition])


def test_table_shows_rates_shares_and_every_runs_roof():
    tables = load_tool('analysis_tools/benchmark_table')
    counted = fake_result({'mmseg': (4.0, 0.5), 'folded+bf16': (3.0, 0.25)}, fake_roof(10.0, 40.0, 80.0),
                          dict(mmseg=dict(gflops=4.0), configured=dict(gflops=3.0)))
    # A run timed with --no-flops takes the count of the same config, input and batch from the other run.
    uncounted = fake_result({'mmseg': (None, 0.5), 'compiled': (None, 0.2)}, fake_roof(20.0, 40.0, 80.0), None)
    text = tables.table([counted, uncounted])
    assert '| speed-up | GMAC/s | % of roof |' in text
    assert '| mmseg | 4.0 | 500 | 3 | 1.00x (baseline) | 8.0 | 80.0% float32 |' in text
    assert '| folded+bf16 | 3.0 | 250 | 3 | **1.00x** | 12.0 | 30.0% bf16 |' in text
    assert '| mmseg | 4.0* | 500 | 3 | 1.00x (baseline) | 8.0* | 40.0% float32 |' in text
    assert '| compiled | 3.0* | 200 | 3 | **1.00x** | 15.0* | 75.0% float32 |' in text
    assert '| erfnet_fcn_4xb4-160k_cityscapes-512x1024 | inference | 64x128 | mmseg, folded+bf16 | 2 | ' \
           '10 | 5 | 40 | 20 | 80 | 40 |' in text
    no_roof = tables.table([fake_result({'mmseg': (4.0, 0.5)}, None, dict(mmseg=dict(gflops=4.0)))])
    assert '| 1.00x (baseline) | 8.0 | - |' in no_roof and 'No run measured the roof' in no_roof


def test_cli_measures_the_roof_and_every_rows_share_of_it(tmp_path, monkeypatch):
    tool = load_tool('analysis_tools/benchmark')
    monkeypatch.setattr(tool, 'measure_roof', lambda: measure_roof(TINY_ROOF, calls=1, min_seconds=0))
    out = tmp_path / 'bench.json'
    argv = [ERFNET_CONFIG, '--shape', 32, 64, '--variants', 'configured', 'amp', '--repeats', 1, '--warmup', 0,
            '--allocator', 'default', '--json', out]
    assert tool.main([str(arg) for arg in argv]) == 0
    result = json.loads(out.read_text())
    roof = result['roof']
    assert roof['threads'] == torch.get_num_threads() and roof['shapes']['matmul'] == TINY_ROOF.matmul
    rows = result['conditions'][0]['results']
    for name, precision in (('configured', 'float32'), ('amp', 'bf16')):
        row = rows[name]
        assert row['precision'] == precision
        assert row['achieved_gmacs'] == pytest.approx(row['gflops'] / row['median_s'])
        assert row['roof_fraction'] == pytest.approx(row['achieved_gmacs'] / roof[precision]['roof'])


def test_tables_say_what_an_int8_row_was_calibrated_on():
    result = fake_result({'onnxruntime': (3.0, 0.5), 'onnxruntime-int8': (3.0, 0.25)}, None,
                         dict(configured=dict(gflops=3.0)))
    result['conditions'][0]['results']['onnxruntime-int8']['calibration'] = 'demo scenes (config data absent)'
    expected = 'onnxruntime-int8 (calibrated on demo scenes (config data absent))'
    assert f'| {expected} | 3.0 |' in load_tool('analysis_tools/benchmark_table').table([result])
    condition = result['conditions'][0]
    for row in condition['results'].values():
        row.update(params_m=1.0, p90_s=row['median_s'], images_per_s=1 / row['median_s'])
    assert f'| {expected} |' in load_tool('analysis_tools/benchmark').markdown_table(condition)
