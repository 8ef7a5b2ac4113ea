"""The exported model as variants of ``tools/analysis_tools/benchmark.py``: ``onnxruntime`` (float32),
``onnxruntime-int8`` (static int8, calibrated on the config's train split), and the same float32 file in
OpenVINO, ``openvino`` (float32) and ``openvino-bf16`` (bf16 inference precision, refused on a CPU without bf16),
registered in :data:`.variants.VARIANT_STEPS` when :mod:`mmseg_ext.benchmark` is imported.

Each exports a static graph of exactly the input it is timed on: the benchmark's ``--shape`` in whole
mode, the sliding window in slide mode (:func:`graph_input`).

The benchmark hands every path the same normalised images; the graph normalises itself, so the path
here feeds it the raw images those come from (computed once per input, outside the timing) and runs the
config's test mode (whole image or sliding window), returning logits at the input size.
"""
import copy
import os.path as osp
import sys
import tempfile
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config

from mmseg_ext.deploy.export import export_segmentor
from mmseg_ext.deploy.runtime import import_openvino, require_openvino_bf16
from mmseg_ext.deploy.segmentor import RawSegDataPreProcessor, slide_windows
from mmseg_ext.folding import fuse_conv_bn
from mmseg_ext.registry import MODELS

from .tasks import image_metas
from .variants import Subject, VariantContext, register_variant_step

__all__ = ['OnnxRuntimeVariant', 'graph_input']


def graph_input(test_cfg: dict, shape: Tuple[int, int]) -> Tuple[Tuple[int, int], dict]:
    """The static input size that the test mode feeds the graph on images of ``shape``, and the test
    config that slides windows of exactly that size over them.

    mmseg's windows are ``min(crop, image)`` along each side: an image smaller than the crop is one window
    of its own size along that side. A crop cut to the image there gives the same single window, so the
    returned test config computes what the configured one does.
    """
    test_cfg = dict(test_cfg)
    if test_cfg.get('mode', 'whole') != 'slide':
        return tuple(shape), test_cfg
    y1, y2, x1, x2 = next(slide_windows(*shape, test_cfg['crop_size'], test_cfg['stride']))
    window = (y2 - y1, x2 - x1)  # every window has this size
    test_cfg['crop_size'] = window
    return window, test_cfg


class OnnxRuntimeVariant:
    """``model`` exported (conv-BN folded, static input of the benchmark's size or its slide windows,
    :func:`graph_input`) and opened by ``runtime`` at ``threads`` threads.

    Args:
        runtime: ``'onnxruntime'`` (:func:`~mmseg_ext.deploy.session_options`) or ``'openvino'``.
        precision: ``'float32'``, or ``'bf16'`` (OpenVINO only).
        quantize_cfg: also quantise to int8, calibrating on this config's train split, or on demo scenes
            when its images are absent (``row_fields['calibration']`` says which).
    """

    def __init__(self, model: nn.Module, cfg: Config, shape: Tuple[int, int], threads: int,
                 quantize_cfg: Optional[Config] = None, calibration_images: int = 4, runtime: str = 'onnxruntime',
                 precision: str = 'float32'):
        self._directory = tempfile.TemporaryDirectory(prefix='mmseg_ext_bench_')
        self.path = osp.join(self._directory.name, 'model.onnx')
        graph_shape, test_cfg = graph_input(model.test_cfg or dict(mode='whole'), shape)
        model = fuse_conv_bn(copy.deepcopy(model).float().eval())
        cfg = copy.deepcopy(cfg)
        cfg.model.test_cfg = test_cfg
        self.preprocessor = model.data_preprocessor
        export_segmentor(model, cfg, self.path, graph_shape, dynamic=False, fused_conv_bn=True)
        self.row_fields: dict = {}  # extra fields of this variant's benchmark row
        if quantize_cfg is not None:
            from mmseg_ext.deploy.calibration import benchmark_calibration_config
            from mmseg_ext.deploy.quantize import quantize_int8
            calibration_cfg, source = benchmark_calibration_config(quantize_cfg, self._directory.name,
                                                                   calibration_images)
            print(f'[benchmark] int8 calibration on {calibration_images} images of {source}', file=sys.stderr)
            quantized = osp.join(self._directory.name, 'model_int8.onnx')
            quantize_int8(self.path, quantized, calibration_cfg, calibration_images, calibration=source)
            self.path = quantized
            self.row_fields['calibration'] = source
        self.segmentor = MODELS.build(dict(
            type='mmseg_ext.ONNXRuntimeSegmentor', onnx_file=self.path, threads=threads, runtime=runtime,
            precision=precision, data_preprocessor=RawSegDataPreProcessor.from_config(cfg.model.data_preprocessor),
            test_cfg=test_cfg))
        self.session = self.segmentor.session
        self._raw: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def raw_images(self, normalised: torch.Tensor) -> torch.Tensor:
        """The images (as loaded) that the config's data preprocessor turns into ``normalised``."""
        images = normalised.float().cpu()
        if getattr(self.preprocessor, '_enable_normalize', False):
            images = images * self.preprocessor.std + self.preprocessor.mean
        if getattr(self.preprocessor, 'channel_conversion', False):
            images = images[:, [2, 1, 0]]
        return images.contiguous()

    def __call__(self, normalised: torch.Tensor) -> torch.Tensor:
        """The config's test-mode inference of the images behind ``normalised``: logits at the input size."""
        if self._raw is None or self._raw[0] is not normalised:
            self._raw = (normalised, self.raw_images(normalised))
        images = self._raw[1]
        return self.segmentor.inference(images, image_metas(images))


def _runtime_step(quantize: bool, runtime: str = 'onnxruntime', precision: str = 'float32'):
    def step(subject: Optional[Subject], context: VariantContext) -> Subject:
        if context.cfg is None or context.input_shape is None:
            raise ValueError(f'the {runtime} variants need the config and the input size in the VariantContext')
        if runtime == 'openvino':  # refused before the export, which takes a while
            import_openvino()
            if precision == 'bf16':
                require_openvino_bf16()
        variant = OnnxRuntimeVariant(context.plugin, context.cfg, context.input_shape, torch.get_num_threads(),
                                     quantize_cfg=context.cfg if quantize else None, runtime=runtime,
                                     precision=precision)
        return Subject(None, variant, trainable=False, row_fields=variant.row_fields)
    return step


register_variant_step('onnxruntime', _runtime_step(quantize=False), base=True)
register_variant_step('onnxruntime-int8', _runtime_step(quantize=True), base=True)
register_variant_step('openvino', _runtime_step(quantize=False, runtime='openvino'), base=True)
register_variant_step('openvino-bf16', _runtime_step(quantize=False, runtime='openvino', precision='bf16'),
                      base=True)
