"""The exported model in onnxruntime as variants of ``tools/benchmark.py``: ``onnxruntime`` (float32)
and ``onnxruntime-int8`` (static int8, calibrated on the config's train split).

The benchmark hands every path the same normalised images; the graph normalises itself, so the path
here feeds it the raw images those come from (computed once per input, outside the timing) and runs the
config's test mode (whole image or sliding window), returning logits at the input size.
"""
import copy
import os.path as osp
import tempfile
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config

from mmseg_ext.benchmarking import Subject, VariantContext, register_variant_step
from mmseg_ext.folding import fuse_conv_bn

from .export import export_segmentor
from .runtime import OnnxSegmentorSession

__all__ = ['OnnxRuntimeVariant']


class OnnxRuntimeVariant:
    """``model`` exported (conv-BN folded, static input of the benchmark's size or slide crop) and opened
    with :func:`~mmseg_ext.deploy.session_options` at ``threads`` threads.

    Args:
        quantize_cfg: also quantise to int8, calibrating on this config's train split.
    """

    def __init__(self, model: nn.Module, cfg: Config, shape: Tuple[int, int], threads: int,
                 quantize_cfg: Optional[Config] = None, calibration_images: int = 4):
        self._directory = tempfile.TemporaryDirectory(prefix='mmseg_ext_bench_')
        self.path = osp.join(self._directory.name, 'model.onnx')
        test_cfg = dict(model.test_cfg or dict(mode='whole'))
        model = fuse_conv_bn(copy.deepcopy(model).float().eval())
        cfg = copy.deepcopy(cfg)
        cfg.model.test_cfg = test_cfg
        graph_shape = tuple(test_cfg['crop_size']) if test_cfg.get('mode') == 'slide' else tuple(shape)
        self.preprocessor = model.data_preprocessor
        export_segmentor(model, cfg, self.path, graph_shape, dynamic=False, fused_conv_bn=True)
        if quantize_cfg is not None:
            from .quantize import quantize_int8
            quantized = osp.join(self._directory.name, 'model_int8.onnx')
            quantize_int8(self.path, quantized, quantize_cfg, calibration_images)
            self.path = quantized
        from mmseg_ext.registry import MODELS

        from .segmentor import RawSegDataPreProcessor
        self.segmentor = MODELS.build(dict(
            type='mmseg_ext.ONNXRuntimeSegmentor', onnx_file=self.path, threads=threads,
            data_preprocessor=RawSegDataPreProcessor.from_config(cfg.model.data_preprocessor), test_cfg=test_cfg))
        self.session: OnnxSegmentorSession = self.segmentor.session
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
        height, width = images.shape[-2:]
        metas = [dict(ori_shape=(height, width), img_shape=(height, width), pad_shape=(height, width))] * len(images)
        return self.segmentor.inference(images, metas)


def _runtime_step(quantize: bool):
    def step(subject: Optional[Subject], context: VariantContext) -> Subject:
        if context.cfg is None or context.input_shape is None:
            raise ValueError('the onnxruntime variants need the config and the input size in the VariantContext')
        variant = OnnxRuntimeVariant(context.plugin, context.cfg, context.input_shape, torch.get_num_threads(),
                                     quantize_cfg=context.cfg if quantize else None)
        return Subject(None, variant, trainable=False)
    return step


register_variant_step('onnxruntime', _runtime_step(quantize=False), base=True)
register_variant_step('onnxruntime-int8', _runtime_step(quantize=True), base=True)
