"""The exported model in onnxruntime as one more variant for ``tools/benchmark.py``.

The benchmark times the segmentor's ``inference`` on normalised inputs; the graph normalises itself, so
the runner here feeds it the raw image those inputs come from (computed once, outside the timing) and
returns logits at the input size, which the benchmark compares with mmseg's.
"""
import copy
import os.path as osp
import tempfile
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config

from mmseg_ext.folding import fuse_conv_bn

from .export import export_segmentor
from .runtime import OnnxSegmentorSession

__all__ = ['ONNXRUNTIME_LABEL', 'OnnxRuntimeVariant']

ONNXRUNTIME_LABEL = 'onnxruntime'


class OnnxRuntimeVariant:
    """``model`` exported (conv-BN folded, static input of the benchmark's size or slide crop) and opened
    with :func:`~mmseg_ext.deploy.session_options` at ``threads`` threads.

    Args:
        quantize_cfg: also quantise to int8, calibrating on this config's train split.
    """

    def __init__(self, model: nn.Module, cfg: Config, mode: str, shape: Tuple[int, int],
                 crop: Optional[Tuple[int, int]], stride: Optional[Tuple[int, int]], threads: int,
                 optimization: str = 'all', quantize_cfg: Optional[Config] = None, calibration_images: int = 4):
        self._directory = tempfile.TemporaryDirectory(prefix='mmseg_ext_bench_')
        self.path = osp.join(self._directory.name, 'model.onnx')
        model = fuse_conv_bn(copy.deepcopy(model).float().eval())
        cfg = copy.deepcopy(cfg)
        cfg.model.test_cfg = dict(mode=mode, crop_size=crop, stride=stride) if mode == 'slide' else dict(mode=mode)
        graph_shape = tuple(crop) if mode == 'slide' else tuple(shape)
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
            data_preprocessor=RawSegDataPreProcessor.from_config(cfg.model.data_preprocessor),
            test_cfg=cfg.model.test_cfg))
        self.session: OnnxSegmentorSession = self.segmentor.session

    def raw_images(self, normalised: torch.Tensor) -> torch.Tensor:
        """The images (as loaded) that the config's data preprocessor turns into ``normalised``."""
        images = normalised.float().cpu()
        if getattr(self.preprocessor, '_enable_normalize', False):
            images = images * self.preprocessor.std + self.preprocessor.mean
        if getattr(self.preprocessor, 'channel_conversion', False):
            images = images[:, [2, 1, 0]]
        return images.contiguous()

    def runner(self, normalised: torch.Tensor) -> Callable[[], torch.Tensor]:
        images = self.raw_images(normalised)
        height, width = images.shape[-2:]
        metas = [dict(ori_shape=(height, width), img_shape=(height, width), pad_shape=(height, width))] * len(images)

        def run() -> torch.Tensor:
            return self.segmentor.inference(images, metas)

        return run

    @staticmethod
    def ratios(timings: Dict[str, object], baselines: Tuple[str, ...]) -> Dict[str, float]:
        """Median of each baseline over onnxruntime's median (the speed-up of the deployed model)."""
        ours = timings[ONNXRUNTIME_LABEL].median
        return {f'onnxruntime_speedup_over_{name}': timings[name].median / ours for name in baselines if name in timings}
