"""tools/deployment/export_onnx.py, then tools/test.py and tools/deployment/infer.py on the exported file, on the
tiny dataset."""
import re

import cv2
import numpy as np
import pytest

from utils import REPO, export, family_model, run_tool

pytestmark = pytest.mark.slow


def _miou(output: str) -> float:
    return float(re.search(r'\[test\] aAcc: [\d.]+\s+mIoU: ([\d.]+)', output).group(1))


@pytest.fixture(scope='module')
def exported(trained_run, tmp_path_factory):
    config, work_dir, _ = trained_run
    out = tmp_path_factory.mktemp('exported') / 'tiny.onnx'
    proc = run_tool(['deployment/export_onnx.py', config, work_dir / 'iter_4.pth', '--out', out, '--dynamic-shape'],
                    cwd=out.parent)
    return out, proc.stdout


def test_export_reports_the_difference_and_the_path_last(exported):
    out, stdout = exported
    lines = stdout.strip().splitlines()
    assert lines[-1] == f'[export] {out}'
    difference = float(re.search(r'largest logit difference ([\d.e+-]+)', lines[-2]).group(1))
    assert difference < 1e-3


def test_test_and_infer_tools_give_the_checkpoint_miou_and_masks(exported, trained_run, tiny_data, tmp_path):
    config, work_dir, _ = trained_run
    onnx_file, _ = exported
    from_checkpoint = run_tool(['test.py', config, work_dir / 'iter_4.pth', '--work-dir', tmp_path / 'pth',
                                '--out', tmp_path / 'pth_preds'], cwd=tmp_path)
    from_onnx = run_tool(['test.py', config, onnx_file, '--work-dir', tmp_path / 'onnx', '--out',
                          tmp_path / 'onnx_preds', '--show-dir', 'overlays'], cwd=tmp_path)
    assert abs(_miou(from_onnx.stdout) - _miou(from_checkpoint.stdout)) <= 0.1
    expected = {path.stem: cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                for path in sorted((tmp_path / 'pth_preds').glob('*.png'))}
    assert len(expected) == 4
    for stem, labels in expected.items():
        ours = cv2.imread(str(tmp_path / 'onnx_preds' / f'{stem}.png'), cv2.IMREAD_UNCHANGED)
        assert (ours != labels).mean() < 0.001
    assert len(list((tmp_path / 'onnx' / 'overlays').rglob('*.png'))) == 4

    # the val images are not resized by the tiny test pipeline, so infer.py's masks are test.py's label maps
    images = sorted((tiny_data / 'leftImg8bit' / 'val').rglob('*.png'))
    proc = run_tool(['deployment/infer.py', config, onnx_file, *images, '--out-dir', tmp_path / 'infer'], cwd=tmp_path)
    assert '[infer] 4 images' in proc.stdout
    for path in images:
        labels = cv2.imread(str(tmp_path / 'infer' / f'{path.stem}_labels.png'), cv2.IMREAD_UNCHANGED)
        reference = next(value for key, value in expected.items() if path.stem.startswith(key))
        assert (labels != reference).mean() < 0.001
        color = cv2.imread(str(tmp_path / 'infer' / f'{path.stem}_color.png')).astype(np.float32)
        overlay = cv2.imread(str(tmp_path / 'infer' / f'{path.stem}_overlay.png')).astype(np.float32)
        blended = (cv2.imread(str(path)).astype(np.float32) * 0.5 + color * 0.5).round()
        assert np.abs(overlay - blended).max() <= 1

    # the same file in OpenVINO, through the same segmentor: the same label maps and masks
    run_tool(['test.py', config, onnx_file, '--runtime', 'openvino', '--work-dir', tmp_path / 'openvino', '--out',
              tmp_path / 'openvino_preds'], cwd=tmp_path)
    for stem, labels in expected.items():
        ours = cv2.imread(str(tmp_path / 'openvino_preds' / f'{stem}.png'), cv2.IMREAD_UNCHANGED)
        assert (ours != labels).mean() < 0.001
    run_tool(['deployment/infer.py', config, onnx_file, images[0], '--runtime', 'openvino', '--out-dir',
              tmp_path / 'openvino_infer'], cwd=tmp_path)
    labels = cv2.imread(str(tmp_path / 'openvino_infer' / f'{images[0].stem}_labels.png'), cv2.IMREAD_UNCHANGED)
    assert (labels != cv2.imread(str(tmp_path / 'infer' / f'{images[0].stem}_labels.png'),
                                 cv2.IMREAD_UNCHANGED)).mean() < 0.001


def test_int8_export_is_quantised_and_evaluates(trained_run, tmp_path):
    config, work_dir, _ = trained_run
    out = tmp_path / 'tiny_int8.onnx'
    proc = run_tool(['deployment/export_onnx.py', config, work_dir / 'iter_4.pth', '--out', out, '--quantize', 'int8',
                     '--calibration-images', 2], cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == f'[export] {out}'
    assert (tmp_path / 'tiny_int8_fp32.onnx').is_file()
    import onnx
    graph = onnx.load(str(out)).graph
    assert any(node.op_type == 'QuantizeLinear' for node in graph.node)
    from mmseg_ext.deploy import OnnxSegmentorSession
    assert OnnxSegmentorSession(str(out)).meta.quantized.startswith(
        "int8 (QDQ, uint8 activations, per-channel int8 weights, 2 calibration inputs from the config's train split")
    evaluated = run_tool(['test.py', config, out, '--work-dir', tmp_path / 'int8'], cwd=tmp_path)
    assert 0.0 <= _miou(evaluated.stdout) <= 100.0


def test_benchmark_times_the_onnxruntime_variants_beside_mmseg(tmp_path):
    """``onnxruntime`` is a variant of tools/analysis_tools/benchmark.py: exported, timed and compared with mmseg's
    logits."""
    import json
    out = tmp_path / 'bench.json'
    config = REPO / 'configs' / 'erfnet' / 'erfnet_fcn_4xb4-160k_cityscapes-512x1024.py'
    run_tool(['analysis_tools/benchmark.py', config,
              '--shape', 64, 128, '--variants', 'mmseg', 'onnxruntime', '--repeats', 1, '--warmup', 0, '--no-flops',
              '--threads', 1, '--allocator', 'default', '--json', out], cwd=tmp_path)
    rows = json.loads(out.read_text())['conditions'][0]['results']
    assert set(rows) == {'mmseg', 'onnxruntime'}
    assert rows['onnxruntime']['median_s'] > 0
    assert rows['onnxruntime']['max_abs_diff'] < 1e-3


def _float_and_int8(name: str, tmp_path, tiny_data, shape=(64, 128), fold: bool = False):
    """A family's small static export (``fold``: conv-BN folded first, as docs/deploy.md says for int8),
    its int8 version calibrated on the tiny data, and random raw images."""
    from mmseg_ext.deploy.quantize import quantize_int8
    from mmseg_ext.folding import fuse_conv_bn
    cfg, model = family_model(name, cfg_options={'train_dataloader.dataset.data_root': str(tiny_data)})
    if fold:
        model = fuse_conv_bn(model.eval())
    float_path = export(model, cfg, tmp_path / f'{name}.onnx', shape, dynamic=False, fused_conv_bn=fold)
    int8_path = tmp_path / f'{name}_int8.onnx'
    quantize_int8(str(float_path), str(int8_path), cfg, calibration_images=2)
    images = np.random.default_rng(0).uniform(0, 255, (2, 3, *shape)).astype(np.float32)
    return float_path, int8_path, images


def _agreement(float_path, int8_path, images) -> float:
    from mmseg_ext.deploy import OnnxSegmentorSession
    float_labels = OnnxSegmentorSession(str(float_path), threads=1).run_numpy(images).argmax(1)
    int8_labels = OnnxSegmentorSession(str(int8_path), threads=1).run_numpy(images).argmax(1)
    return float((float_labels == int8_labels).mean())


def test_int8_erfnet_runs_its_convolutions_and_residual_sums_in_int8(tmp_path, tiny_data):
    """Every convolution (the upsamplers' ConvTranspose too, as phase convolutions) is a QLinearConv in
    onnxruntime's optimised graph and the residual sums are QLinearAdd, all channels-last with no layout
    Transpose between them; labels mostly agree with float."""
    import onnx
    from mmseg_ext.deploy.quantize import INTEGER_NODE_TYPES, optimized_node_counts
    float_path, int8_path, images = _float_and_int8('erfnet-fcn', tmp_path, tiny_data, fold=True)
    float_nodes = onnx.load(str(float_path)).graph.node
    convolutions = sum(node.op_type in ('Conv', 'ConvTranspose') for node in float_nodes)
    upsamplers = sum(node.op_type == 'ConvTranspose' for node in float_nodes)
    counts = optimized_node_counts(str(int8_path))
    assert counts['QLinearConv'] == convolutions
    assert counts['QLinearAdd'] >= 16  # one per non-bottleneck-1d block
    assert counts['NhwcMaxPool'] == 3 and not counts['MaxPool'] and not counts['DepthToSpace']
    # the image's, the logits' and one interleave of the phases per upsampler
    assert counts['Transpose'] <= 2 + upsamplers
    assert all(op in INTEGER_NODE_TYPES for op in counts if op.startswith('QLinear'))
    assert _agreement(float_path, int8_path, images) > 0.9


def test_int8_channels_last_rewrites_keep_the_values(tmp_path, tiny_data, monkeypatch):
    """ERFNet's max-pooling and phase interleave rewritten to uint8 channels-last give the logits of the
    quantised graph as the quantiser wrote it."""
    import onnx
    from mmseg_ext.deploy import OnnxSegmentorSession, quantize
    rewrite = quantize.uint8_channels_last
    monkeypatch.setattr(quantize, 'uint8_channels_last', lambda model: {})
    _, as_quantized, images = _float_and_int8('erfnet-fcn', tmp_path, tiny_data, fold=True)
    model = onnx.load(str(as_quantized))
    assert rewrite(model) == dict(max_pool_channels_last=3, depth_to_space_channels_last=2)
    rewritten = tmp_path / 'rewritten.onnx'
    onnx.save(model, str(rewritten))
    expected = OnnxSegmentorSession(str(as_quantized), threads=1).run_numpy(images)
    actual = OnnxSegmentorSession(str(rewritten), threads=1).run_numpy(images)
    assert np.abs(actual - expected).max() <= 1e-6 * (expected.max() - expected.min())


def test_int8_segformer_runs_its_linear_layers_in_int8_and_attention_in_float(tmp_path, tiny_data):
    """Linear layers (the head's accumulated fusion included) and convolutions are integer kernels; the
    attention products and softmax stay float (their integer kernels are slower here)."""
    import onnx
    from mmseg_ext.deploy.quantize import int8_node_counts
    float_path, int8_path, images = _float_and_int8('segformer-b0', tmp_path, tiny_data)
    counts = int8_node_counts(str(int8_path))
    assert counts.get('QLinearConv', 0) > 0
    assert counts.get('QGemm', 0) + counts.get('MatMulIntegerToFloat', 0) >= 20
    assert 'QLinearSoftmax' not in counts
    graph = onnx.load(str(int8_path)).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    constants = {initializer.name for initializer in graph.initializer}
    attention = [node for node in graph.node if node.op_type == 'MatMul' and node.input[1] not in constants
                 and producers.get(node.input[1]) != 'DequantizeLinear']
    assert len(attention) == 16  # two products in each of MiT-B0's 8 attention blocks
    assert all(producers.get(name) != 'DequantizeLinear' for node in attention for name in node.input)
    assert _agreement(float_path, int8_path, images) > 0.8


def test_graph_preparation_keeps_the_logits(tmp_path):
    """The rewrites before quantisation (phase convolutions for ConvTranspose, ReLU before their
    interleave, split Gemm bias, fused GELU) change no value."""
    import onnx
    from mmseg_ext.deploy import OnnxSegmentorSession
    from mmseg_ext.deploy.graph_rewrites import prepare_graph
    images = np.random.default_rng(1).uniform(0, 255, (1, 3, 64, 128)).astype(np.float32)
    for name, rewrites in (('erfnet-fcn', ('conv_transpose_as_phases', 'relu_before_depth_to_space')),
                           ('segformer-b0', ('gelu_fused',))):
        cfg, model = family_model(name)
        float_path = export(model, cfg, tmp_path / f'{name}.onnx', (64, 128), dynamic=False)
        prepared = tmp_path / f'{name}_prepared.onnx'
        counts = prepare_graph(str(float_path), str(prepared))
        assert all(counts[rewrite] > 0 for rewrite in rewrites)
        onnx.save(onnx.load(str(prepared)), str(prepared))  # loadable as it is
        expected = OnnxSegmentorSession(str(float_path), threads=1).run_numpy(images)
        actual = OnnxSegmentorSession(str(prepared), threads=1).run_numpy(images)
        assert np.abs(actual - expected).max() <= 1e-4 * (expected.max() - expected.min())


def test_benchmark_calibrates_on_demo_scenes_when_the_config_data_is_absent(tmp_path, tiny_data):
    from mmseg_ext.deploy.calibration import (CONFIG_CALIBRATION, DEMO_CALIBRATION, benchmark_calibration_config,
                                              check_calibration_data)
    cfg, _ = family_model('erfnet-fcn', cfg_options={'train_dataloader.dataset.data_root': str(tmp_path / 'absent')})
    calibration_cfg, source = benchmark_calibration_config(cfg, str(tmp_path), images=2)
    assert source == DEMO_CALIBRATION == 'demo scenes (config data absent)'
    check_calibration_data(calibration_cfg)  # the demo scenes are there
    cfg.train_dataloader.dataset.data_root = str(tiny_data)
    assert benchmark_calibration_config(cfg, str(tmp_path), images=2) == (cfg, CONFIG_CALIBRATION)
