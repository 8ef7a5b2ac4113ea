"""The demo-scene writer as a library call (int8 calibration uses it without the tool)."""
import numpy as np
import pytest

from mmseg_ext.datasets import write_demo_dataset
from mmseg_ext.datasets.demo_scenes import DRAWN_TRAIN_IDS, IGNORE, MIN_SIDE, draw_scene


@pytest.mark.parametrize('kwargs, named', [(dict(train=0, val=1), 'train must be positive, got 0'),
                                           (dict(train=1, val=-2), 'val must be positive, got -2'),
                                           (dict(train=1, val=1, height=MIN_SIDE - 1), f'got {MIN_SIDE - 1}x512')])
def test_bad_sizes_are_refused_naming_the_value(tmp_path, kwargs, named):
    with pytest.raises(ValueError, match=named):
        write_demo_dataset(tmp_path / 'scenes', **kwargs)
    assert not (tmp_path / 'scenes').exists(), 'nothing is written before the arguments are checked'


def test_writes_both_splits_and_draws_only_cityscapes_train_ids(tmp_path):
    write_demo_dataset(tmp_path, train=3, val=2, height=MIN_SIDE, width=96)
    assert len(list((tmp_path / 'leftImg8bit' / 'train').rglob('*.png'))) == 3
    assert len(list((tmp_path / 'gtFine' / 'val').rglob('*_labelTrainIds.png'))) == 2
    image, label = draw_scene(seed=0, index=5, height=MIN_SIDE, width=96)
    assert image.shape == (MIN_SIDE, 96, 3) and label.shape == (MIN_SIDE, 96)
    assert set(np.unique(label).tolist()) <= set(DRAWN_TRAIN_IDS) | {IGNORE}
    again, _ = draw_scene(seed=0, index=5, height=MIN_SIDE, width=96)
    assert np.array_equal(image, again)
