"""tools/export_onnx.py, then tools/test.py and tools/infer.py on the exported file, on the tiny dataset."""
import re

import cv2
import numpy as np
import pytest

from utils import REPO, run_tool

pytestmark = pytest.mark.slow


def _miou(output: str) -> float:
    return float(re.search(r'\[test\] aAcc: [\d.]+\s+mIoU: ([\d.]+)', output).group(1))


@pytest.fixture(scope='module')
def exported(trained_run, tmp_path_factory):
    config, work_dir, _ = trained_run
    out = tmp_path_factory.mktemp('exported') / 'tiny.onnx'
    proc = run_tool(['export_onnx.py', config, work_dir / 'iter_4.pth', '--out', out, '--dynamic-shape'],
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
    proc = run_tool(['infer.py', config, onnx_file, *images, '--out-dir', tmp_path / 'infer'], cwd=tmp_path)
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
    run_tool(['infer.py', config, onnx_file, images[0], '--runtime', 'openvino', '--out-dir',
              tmp_path / 'openvino_infer'], cwd=tmp_path)
    labels = cv2.imread(str(tmp_path / 'openvino_infer' / f'{images[0].stem}_labels.png'), cv2.IMREAD_UNCHANGED)
    assert (labels != cv2.imread(str(tmp_path / 'infer' / f'{images[0].stem}_labels.png'),
                                 cv2.IMREAD_UNCHANGED)).mean() < 0.001


def test_int8_export_is_quantised_and_evaluates(trained_run, tmp_path):
    config, work_dir, _ = trained_run
    out = tmp_path / 'tiny_int8.onnx'
    proc = run_tool(['export_onnx.py', config, work_dir / 'iter_4.pth', '--out', out, '--quantize', 'int8',
                     '--calibration-images', 2], cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == f'[export] {out}'
    assert (tmp_path / 'tiny_int8_fp32.onnx').is_file()
    import onnx
    graph = onnx.load(str(out)).graph
    assert any(node.op_type == 'QuantizeLinear' for node in graph.node)
    from mmseg_ext.deploy import OnnxSegmentorSession
    assert OnnxSegmentorSession(str(out)).meta.quantized.startswith('int8 (per-channel weights, 2 calibration')
    evaluated = run_tool(['test.py', config, out, '--work-dir', tmp_path / 'int8'], cwd=tmp_path)
    assert 0.0 <= _miou(evaluated.stdout) <= 100.0


def test_benchmark_times_the_onnxruntime_variants_beside_mmseg(tmp_path):
    """``onnxruntime`` is a variant of tools/benchmark.py: exported, timed and compared with mmseg's logits."""
    import json
    out = tmp_path / 'bench.json'
    run_tool(['benchmark.py', REPO / 'configs' / 'erfnet' / 'erfnet_fcn_4xb4-160k_cityscapes-512x1024.py',
              '--shape', 64, 128, '--variants', 'mmseg', 'onnxruntime', '--repeats', 1, '--warmup', 0, '--no-flops',
              '--threads', 1, '--allocator', 'default', '--json', out], cwd=tmp_path)
    rows = json.loads(out.read_text())['conditions'][0]['results']
    assert set(rows) == {'mmseg', 'onnxruntime'}
    assert rows['onnxruntime']['median_s'] > 0
    assert rows['onnxruntime']['max_abs_diff'] < 1e-3
