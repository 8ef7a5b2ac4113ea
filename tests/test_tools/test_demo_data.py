"""The demo data generator: Cityscapes layout mmseg reads unchanged, valid train ids, determinism."""
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmseg.datasets import CityscapesDataset
from utils import REPO, run_tool



ALLOWED_IDS = {0, 1, 2, 5, 7, 8, 10, 11, 13, 255}


def _digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(root.rglob('*.png')):
        sha.update(str(path.relative_to(root)).encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def test_layout_is_read_by_mmseg_cityscapes_dataset(tiny_data):
    for split, count in (('train', 8), ('val', 4)):
        dataset = CityscapesDataset(data_root=str(tiny_data), pipeline=[],
                                    data_prefix=dict(img_path=f'leftImg8bit/{split}', seg_map_path=f'gtFine/{split}'))
        assert len(dataset) == count
        for i in range(count):
            info = dataset.get_data_info(i)
            assert info['img_path'].endswith('_leftImg8bit.png')
            assert Path(info['seg_map_path']).is_file()
            assert f'/leftImg8bit/{split}/' in info['img_path'] and f'/gtFine/{split}/' in info['seg_map_path']


def test_labels_use_cityscapes_train_ids_and_match_images(tiny_data):
    seen = set()
    for image_path in sorted(tiny_data.rglob('*_leftImg8bit.png')):
        label_path = Path(str(image_path).replace('leftImg8bit/', 'gtFine/').replace(
            '_leftImg8bit.png', '_gtFine_labelTrainIds.png'))
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 128, 3) and image.dtype == np.uint8
        assert label.shape == (64, 128) and label.dtype == np.uint8
        ids = set(np.unique(label).tolist())
        assert ids <= ALLOWED_IDS, ids - ALLOWED_IDS
        seen |= ids
    assert seen >= ALLOWED_IDS - {255}, f'classes never drawn: {ALLOWED_IDS - seen}'


def test_scenes_vary_in_layout_and_lighting(tmp_path):
    run_tool(['dataset_converters/make_demo_data.py', tmp_path, '--train', 12, '--val', 1], cwd=REPO)
    images = [cv2.imread(str(p)) for p in sorted((tmp_path / 'leftImg8bit' / 'train').rglob('*.png'))]
    labels = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((tmp_path / 'gtFine' / 'train').rglob('*.png'))]
    brightness = [img.mean() for img in images]
    assert max(brightness) - min(brightness) > 20
    horizons = [int(np.argmax((lbl == 10).mean(1) < 0.5)) for lbl in labels]  # first row mostly not sky
    assert len(set(horizons)) > 6
    car_areas = [(lbl == 13).mean() for lbl in labels]
    assert np.std(car_areas) > 0.005


def test_same_seed_same_bytes_other_seed_other_scenes(tmp_path):
    args = ['--train', 3, '--val', 1, '--height', 64, '--width', 128]
    run_tool(['dataset_converters/make_demo_data.py', tmp_path / 'a'] + args, cwd=REPO)
    run_tool(['dataset_converters/make_demo_data.py', tmp_path / 'b'] + args, cwd=REPO)
    run_tool(['dataset_converters/make_demo_data.py', tmp_path / 'c', '--seed', 1] + args, cwd=REPO)
    assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
    assert _digest(tmp_path / 'a') != _digest(tmp_path / 'c')


def test_train_and_val_scenes_differ(tiny_data):
    train = {p.read_bytes() for p in (tiny_data / 'leftImg8bit' / 'train').rglob('*.png')}
    val = {p.read_bytes() for p in (tiny_data / 'leftImg8bit' / 'val').rglob('*.png')}
    assert not train & val


@pytest.mark.parametrize('bad', [['--train', '0'], ['--height', '32']])
def test_bad_arguments_are_refused(tmp_path, bad):
    proc = run_tool(['dataset_converters/make_demo_data.py', tmp_path] + bad, cwd=REPO, expect_ok=False)
    assert proc.returncode == 2 and 'error:' in proc.stderr
