"""tools/analysis_tools/accuracy.py: the label agreement, the checkpoint it reuses, and the generated table."""
import cv2
import numpy as np
import pytest

from utils import load_tool

accuracy = load_tool('analysis_tools/accuracy')


def _labels(folder, name, values):
    folder.mkdir(exist_ok=True)
    cv2.imwrite(str(folder / name), np.asarray(values, np.uint8))


def test_label_agreement_counts_pixels_over_all_maps(tmp_path):
    _labels(tmp_path / 'ref', 'a.png', [[1, 2], [3, 4]])
    _labels(tmp_path / 'ref', 'b.png', [[0, 0], [0, 0]])
    _labels(tmp_path / 'new', 'a.png', [[1, 2], [3, 5]])
    _labels(tmp_path / 'new', 'b.png', [[0, 0], [0, 0]])
    assert accuracy.label_agreement(str(tmp_path / 'new'), str(tmp_path / 'ref')) == 7 / 8
    (tmp_path / 'new' / 'b.png').unlink()
    with pytest.raises(RuntimeError, match='do not hold the same label maps'):
        accuracy.label_agreement(str(tmp_path / 'new'), str(tmp_path / 'ref'))


def test_only_a_finished_run_is_reused(tmp_path):
    assert accuracy.trained_checkpoint(str(tmp_path)) is None
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_800.pth'))
    assert accuracy.trained_checkpoint(str(tmp_path)) is None  # named but missing
    (tmp_path / 'iter_800.pth').write_bytes(b'weights')
    assert accuracy.trained_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_800.pth')


def test_table_shows_differences_to_float32_and_failures():
    paths = {path.name: path for path in accuracy.PATHS}
    rows = [accuracy.PathResult(accuracy.PATHS[0], miou=70.0, ms_per_image=50.0, same_labels=1.0),
            accuracy.PathResult(paths['bf16 (folded, channels-last, bf16 weights)'], miou=69.75, ms_per_image=20.0,
                                same_labels=0.9975),
            accuracy.PathResult(paths['ONNX Runtime int8'], error='the onnx-int8 export failed (log: x)')]
    model = accuracy.ModelResult('erfnet', accuracy.REPO + '/work_dirs/demo_erfnet/iter_800.pth', False, rows)
    text = accuracy.markdown([model], seconds=120)
    assert '| bf16 (folded, channels-last, bf16 weights) | 69.75 | -0.25 | 99.750% | 20.0 |' in text
    assert '| ONNX Runtime int8 | failed: the onnx-int8 export failed (log: x) | | | |' in text
    assert 'Checkpoint `work_dirs/demo_erfnet/iter_800.pth` (reused from an earlier run)' in text
