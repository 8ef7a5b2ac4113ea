"""tools/dataset_converters/prepare_cityscapes.py: train-id labels from polygons, split sizes, exact missing files."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from utils import run_tool



pytest.importorskip('cityscapesscripts')


def _fake_cityscapes(root: Path, counts=(('train', 2), ('val', 1))) -> list:
    """Images and polygon annotations: road in the bottom half, a car box, sky on top."""
    stems = []
    for split, count in counts:
        for i in range(count):
            stem = f'{split}city_{i:06d}_000019'
            img_dir = root / 'leftImg8bit' / split / f'{split}city'
            gt_dir = root / 'gtFine' / split / f'{split}city'
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(img_dir / f'{stem}_leftImg8bit.png'), np.zeros((32, 64, 3), np.uint8))
            objects = [{'label': 'sky', 'polygon': [[0, 0], [63, 0], [63, 15], [0, 15]]},
                       {'label': 'road', 'polygon': [[0, 16], [63, 16], [63, 31], [0, 31]]},
                       {'label': 'car', 'polygon': [[10, 18], [30, 18], [30, 28], [10, 28]]}]
            (gt_dir / f'{stem}_gtFine_polygons.json').write_text(
                json.dumps({'imgHeight': 32, 'imgWidth': 64, 'objects': objects}))
            stems.append((split, stem))
    return stems


def test_writes_train_id_labels_for_a_complete_subset(tmp_path):
    stems = _fake_cityscapes(tmp_path)
    proc = run_tool(['dataset_converters/prepare_cityscapes.py', tmp_path, '--expect-train', 2, '--expect-val', 1,
                     '--nproc', 2], cwd=tmp_path)
    assert 'wrote 3 train-id label maps' in proc.stdout and 'is complete' in proc.stdout
    split, stem = stems[0]
    label = cv2.imread(str(tmp_path / 'gtFine' / split / f'{split}city' / f'{stem}_gtFine_labelTrainIds.png'),
                       cv2.IMREAD_UNCHANGED)
    assert label[5, 40] == 10 and label[30, 50] == 0 and label[22, 20] == 13  # sky, road, car
    again = run_tool(['dataset_converters/prepare_cityscapes.py', tmp_path, '--expect-train', 2, '--expect-val', 1],
                     cwd=tmp_path)
    assert 'wrote 0 train-id label maps' in again.stdout  # existing labels kept


def test_reports_exactly_what_is_missing(tmp_path):
    stems = _fake_cityscapes(tmp_path)
    split, stem = stems[1]
    missing = tmp_path / 'gtFine' / split / f'{split}city' / f'{stem}_gtFine_polygons.json'
    missing.unlink()
    proc = run_tool(['dataset_converters/prepare_cityscapes.py', tmp_path], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2
    assert f'train: 2 images in {tmp_path / "leftImg8bit" / "train"}, expected 2975' in proc.stderr
    assert f'val: 1 images in {tmp_path / "leftImg8bit" / "val"}, expected 500' in proc.stderr
    assert f'no annotation for {split}city/{stem}_leftImg8bit.png: {missing} is missing' in proc.stderr


def test_missing_folders_are_named(tmp_path):
    (tmp_path / 'leftImg8bit' / 'train').mkdir(parents=True)
    proc = run_tool(['dataset_converters/prepare_cityscapes.py', tmp_path], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2
    assert f'missing folder: {tmp_path / "gtFine" / "train"}' in proc.stderr
    assert f'missing folder: {tmp_path / "leftImg8bit" / "val"}' in proc.stderr
