"""tools/test.py's mIoU and per-class IoU equal the official cityscapesscripts evaluation."""
import re

import numpy as np
import pytest
from utils import run_tool



pytestmark = pytest.mark.slow
csEval = pytest.importorskip('cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling')

CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign', 'vegetation',
           'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle')


def _iou_table(log: str) -> dict:
    """Per-class IoU (percent) from mmseg's IoUMetric table in the log."""
    rows = re.findall(r'^\|\s*([a-z ]+?)\s*\|\s*([\d.]+|nan)\s*\|', log, flags=re.M)
    return {name: float(iou) for name, iou in rows if name in CLASSES}


def _official_scores(pred_dir, data_root):
    predictions, ground_truths = [], []
    for gt in sorted((data_root / 'gtFine' / 'val').rglob('*_gtFine_labelIds.png')):
        stem = gt.name.replace('_gtFine_labelIds.png', '')
        predictions.append(str(pred_dir / f'{stem}_leftImg8bit.png'))
        ground_truths.append(str(gt))
    args = csEval.args
    args.evalPixelAccuracy, args.quiet, args.JSONOutput = False, True, False
    args.evalInstLevelScore = False  # iIoU needs instance ids, which the demo data does not draw
    args.exportFile = str(pred_dir / 'official.json')
    result = csEval.evaluateImgLists(predictions, ground_truths, args)
    return result['classScores'], result['averageScoreClasses']


def test_iou_metric_matches_official_evaluation(trained_run, tiny_data, tmp_path):
    config, work_dir, _ = trained_run
    checkpoint = work_dir / 'iter_4.pth'
    ours = run_tool(['test.py', config, checkpoint, '--work-dir', tmp_path / 'iou'], cwd=tmp_path)
    table = _iou_table(ours.stdout + ours.stderr)
    miou = float(re.search(r'\[test\] aAcc: [\d.]+\s+mIoU: ([\d.]+)', ours.stdout).group(1))
    pred_dir = tmp_path / 'labelIds'
    formatted = run_tool(['test.py', config, checkpoint, '--work-dir', tmp_path / 'fmt', '--cityscapes-format',
                          pred_dir], cwd=tmp_path)
    assert f'Cityscapes labelId PNGs for the test server: {pred_dir}' in formatted.stdout
    assert len(list(pred_dir.glob('*_leftImg8bit.png'))) == 4

    class_scores, official_miou = _official_scores(pred_dir, tiny_data)
    assert set(table) == set(CLASSES)
    compared = 0
    for name in CLASSES:
        official = class_scores[name]
        if np.isnan(official):
            assert np.isnan(table[name]), name
        else:
            assert abs(table[name] - 100 * official) <= 0.01, (name, table[name], official)
            compared += 1
    assert compared >= 5  # the demo scenes draw nine classes
    assert abs(miou - 100 * official_miou) <= 0.01
