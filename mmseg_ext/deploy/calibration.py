"""Calibration images for int8 quantisation: the config's train split through its test pipeline, or demo scenes.

The images are read as the model sees them at test time (the config's test pipeline without annotations);
in slide mode every sliding window is one calibration input.
"""
import copy
import os.path as osp
from typing import Iterator, List, Optional, Tuple

import numpy as np
from mmengine.config import Config

from mmseg_ext.datasets.demo_scenes import write_demo_dataset
from mmseg_ext.preflight import leaf_datasets
from .metadata import INPUT_NAME, DeployError, DeployMetadata
from .segmentor import slide_windows

__all__ = ['CalibrationDataMissing', 'CalibrationReader', 'check_calibration_data', 'benchmark_calibration_config',
           'calibration_inputs', 'CONFIG_CALIBRATION', 'DEMO_CALIBRATION']

CONFIG_CALIBRATION = "the config's train split"
DEMO_CALIBRATION = 'demo scenes (config data absent)'


class CalibrationDataMissing(DeployError):
    """The config's train images, which int8 calibration reads, are not there."""


def _train_dataset_cfg(cfg: Config) -> Tuple[dict, str]:
    """The (first) train dataset config inside its wrappers, and its --cfg-options key."""
    dataset_cfg = copy.deepcopy((cfg.get('train_dataloader') or {}).get('dataset'))
    if not dataset_cfg:
        raise DeployError('the config has no train_dataloader.dataset to calibrate int8 quantisation on')
    return next(leaf_datasets(dataset_cfg, 'train_dataloader.dataset'))


def _train_dataset_with_test_pipeline(cfg: Config):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    dataset_cfg, key = _train_dataset_cfg(cfg)
    dataset_cfg['pipeline'] = [step for step in cfg.test_dataloader.dataset.pipeline
                               if step['type'] != 'LoadAnnotations']
    try:
        dataset = DATASETS.build(dataset_cfg)
    except FileNotFoundError as error:
        missing = error.filename or str(error)
        raise CalibrationDataMissing(
            f"int8 calibration reads the config's train images, but {missing} does not exist: point "
            f"--cfg-options {key}.data_root=DIR at the dataset (tools/dataset_converters/make_demo_data.py DIR "
            'writes demo scenes in Cityscapes layout)') from None
    if len(dataset) == 0:
        raise CalibrationDataMissing(f'the train split of {dataset_cfg.get("data_root")} is empty: nothing to '
                                     f'calibrate int8 quantisation on (--cfg-options {key}.data_root=DIR)')
    return dataset


def check_calibration_data(cfg: Config) -> None:
    """Raise :class:`CalibrationDataMissing` (one line naming the option to set) unless the config's train
    images can be read."""
    _train_dataset_with_test_pipeline(cfg)


def benchmark_calibration_config(cfg: Config, scratch: str, images: int) -> Tuple[Config, str]:
    """The config to calibrate a benchmark's int8 graph on, and where its images come from: the config
    itself when its train images are there, else a copy reading ``images`` demo scenes
    (:mod:`mmseg_ext.datasets.demo_scenes`) written to ``scratch`` through the config's own test pipeline."""
    try:
        check_calibration_data(cfg)
        return cfg, CONFIG_CALIBRATION
    except CalibrationDataMissing:
        pass
    root = osp.join(scratch, 'demo_scenes')
    write_demo_dataset(root, train=images, val=1)
    demo = copy.deepcopy(cfg)
    demo.train_dataloader.dataset = dict(type='CityscapesDataset', data_root=root,
                                         data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'))
    return demo, DEMO_CALIBRATION


def calibration_inputs(cfg: Config, meta: DeployMetadata, count: int) -> Iterator[np.ndarray]:
    """Graph inputs (1, 3, H, W) from the first ``count`` train images: whole images, or every sliding
    window in slide mode; a static graph gets each resized to its size (only value ranges matter here)."""
    import cv2
    dataset = _train_dataset_with_test_pipeline(cfg)
    for index in range(min(count, len(dataset))):
        image = dataset[index]['inputs'].numpy().astype(np.float32)  # (3, H, W) as loaded
        height, width = image.shape[-2:]
        if meta.mode == 'slide':
            pieces = [image[:, y1:y2, x1:x2]
                      for y1, y2, x1, x2 in slide_windows(height, width, meta.crop_size, meta.stride)]
        else:
            pieces = [image]
        for piece in pieces:
            if meta.shape is not None and piece.shape[-2:] != tuple(meta.shape):
                resized = cv2.resize(piece.transpose(1, 2, 0), (meta.shape[1], meta.shape[0]),
                                     interpolation=cv2.INTER_LINEAR)
                piece = resized.transpose(2, 0, 1)
            yield np.ascontiguousarray(piece[None])


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over a list of inputs."""

    def __init__(self, inputs: List[np.ndarray]):
        self._inputs = iter(inputs)

    def get_next(self) -> Optional[dict]:
        batch = next(self._inputs, None)
        return None if batch is None else {INPUT_NAME: batch}
