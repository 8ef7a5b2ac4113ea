"""int8 static quantisation of an exported graph with onnxruntime, calibrated on the train split.

Weights are quantised per output channel (int8, symmetric), activations per tensor (uint8) from MinMax
calibration on images of the config's train split loaded with its *test* pipeline (the sizes and
value ranges the model sees when deployed); the QDQ format lets onnxruntime fuse the quantised
convolutions into its integer kernels.

Only convolutions are quantised by default. A per-tensor uint8 scale cannot hold a softmax over
thousands of positions (OCR's spatial gather gives each pixel a weight near 1/HW, which rounds to 0),
and quantising attention's matrix products and softmax adds more quantise/dequantise work than the
integer kernels save; ``op_types`` widens the set.
"""
import copy
import os.path as osp
import tempfile
from typing import Iterator, List, Optional, Sequence

import numpy as np
from mmengine.config import Config

from .metadata import INPUT_NAME, DeployError, DeployMetadata
from .segmentor import slide_windows

__all__ = ['calibration_inputs', 'quantize_int8', 'DEFAULT_OP_TYPES']

DEFAULT_OP_TYPES = ('Conv', )


def _train_dataset_with_test_pipeline(cfg: Config):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    dataset_cfg = copy.deepcopy((cfg.get('train_dataloader') or {}).get('dataset'))
    if not dataset_cfg:
        raise DeployError('the config has no train_dataloader.dataset to calibrate int8 quantisation on')
    while 'dataset' in dataset_cfg:  # RepeatDataset and similar wrappers
        dataset_cfg = dataset_cfg['dataset']
    dataset_cfg['pipeline'] = [step for step in cfg.test_dataloader.dataset.pipeline
                               if step['type'] != 'LoadAnnotations']
    return DATASETS.build(dataset_cfg)


def calibration_inputs(cfg: Config, meta: DeployMetadata, count: int) -> Iterator[np.ndarray]:
    """Graph inputs (1, 3, H, W) from the first ``count`` train images: whole images, or every sliding
    window in slide mode; a static graph gets each resized to its size (only value ranges matter here)."""
    import cv2
    dataset = _train_dataset_with_test_pipeline(cfg)
    if len(dataset) == 0:
        raise DeployError('the train split is empty: nothing to calibrate int8 quantisation on')
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


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of inputs."""

    def __init__(self, inputs: List[np.ndarray]):
        self._inputs = iter(inputs)

    def get_next(self) -> Optional[dict]:
        batch = next(self._inputs, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(float_path: str, out_path: str, cfg: Config, calibration_images: int,
                  op_types: Sequence[str] = DEFAULT_OP_TYPES) -> DeployMetadata:
    """Write the int8 version of ``float_path`` to ``out_path``; returns its metadata.

    ``op_types``: the ONNX operators to quantise (e.g. ``['Conv', 'MatMul']``); empty: all onnxruntime can.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .export import write_metadata
    from .metadata import read_metadata
    model = onnx.load(float_path)
    meta = read_metadata({p.key: p.value for p in model.metadata_props}, float_path)
    if meta.output != 'logits':
        raise DeployError('int8 quantisation needs a logits graph (the argmax is not quantised): drop --output labels')
    inputs = list(calibration_inputs(cfg, meta, calibration_images))
    with tempfile.TemporaryDirectory() as work:
        prepared = osp.join(work, 'prepared.onnx')
        quant_pre_process(float_path, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, out_path, _Reader(inputs), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=list(op_types) if op_types else None)
    operators = ', '.join(op_types) if op_types else 'all quantisable operators'
    meta.quantized = f'int8 (per-channel weights, {len(inputs)} calibration inputs, {operators})'
    write_metadata(out_path, meta)
    return meta
