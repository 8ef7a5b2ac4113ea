"""An mmseg segmentor that runs an exported ONNX file (with ONNX Runtime or OpenVINO), so mmengine's runner,
mmseg's evaluators, the visualiser and ``MMSegInferencer`` use it as they use the PyTorch model.

The segmentor is mmseg's :class:`~mmseg.models.EncoderDecoder` with the graph as its ``encode_decode``: its
``predict``, ``whole`` and ``slide`` inference (mmseg's window grid, summing and counting of overlapping
logits) and ``postprocess_result`` (padding removed, flip undone, bilinear resize to the original size,
argmax) are mmseg's own.
"""
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config, ConfigDict
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.segmentors.base import BaseSegmentor
from torch import Tensor

from mmseg_ext.registry import MODELS

from .metadata import DeployError
from .runtime import open_session

__all__ = ['ONNXRuntimeSegmentor', 'RawSegDataPreProcessor', 'slide_windows', 'onnx_model_config', 'use_onnx_model',
           'onnx_inferencer']


# onnx_model_config opens the file to check it before the runner starts; the segmentor the runner then builds
# takes that session instead of opening the file again (for OpenVINO a second compile). One at a time, keyed by
# the file as it was then (path, size, mtime) and the session's settings.
_checked_session: Dict[tuple, object] = {}


def _session_key(onnx_file: str, runtime: str, threads: Optional[int], precision: str) -> Optional[tuple]:
    try:
        stat = os.stat(onnx_file)
    except OSError:
        return None
    return os.path.realpath(onnx_file), stat.st_size, stat.st_mtime_ns, runtime, threads, precision


def _open_checked_session(onnx_file: str, runtime: str, threads: Optional[int], precision: str, keep: bool):
    """The session of ``onnx_file``: the one :func:`onnx_model_config` kept, if it fits, else a new one (kept
    for the segmentor when ``keep``)."""
    key = _session_key(onnx_file, runtime, threads, precision)
    session = _checked_session.pop(key, None) if key is not None else None
    if session is None:
        session = open_session(onnx_file, runtime, threads=threads, precision=precision)
    _checked_session.clear()
    if keep and key is not None:
        _checked_session[key] = session
    return session


def slide_windows(height: int, width: int, crop: Sequence[int],
                  stride: Sequence[int]) -> Iterator[Tuple[int, int, int, int]]:
    """``(y1, y2, x1, x2)`` of mmseg's ``slide_inference`` windows over an image of ``height`` x ``width``,
    for what needs the grid without running it (int8 calibration on windows, the benchmark's FLOPs per input
    and its exported graph's input size); every window is ``min(crop, side)`` along each side."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            yield max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2


@MODELS.register_module()
class RawSegDataPreProcessor(SegDataPreProcessor):
    """mmseg's test-time preprocessing minus what the exported graph does itself.

    Stacks the images as loaded (channel order kept, float32, not normalised) and pads them as the
    config's ``SegDataPreProcessor`` would (its ``test_cfg`` size or size divisor), filling the padding
    with the raw pixel that the graph normalises to the config's ``pad_val``.
    """

    def __init__(self, pad_pixel: Sequence[float], seg_pad_val: int = 255, test_cfg: Optional[dict] = None):
        super().__init__(mean=None, std=None, pad_val=0, seg_pad_val=seg_pad_val, bgr_to_rgb=False,
                         test_cfg=test_cfg)
        self.register_buffer('pad_pixel', torch.tensor(pad_pixel, dtype=torch.float32).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, preprocessor_cfg: dict) -> dict:
        """The config of this preprocessor matching the config's ``SegDataPreProcessor`` settings."""
        mean = preprocessor_cfg.get('mean') or [0.0, 0.0, 0.0]
        std = preprocessor_cfg.get('std') or [1.0, 1.0, 1.0]
        pad_val = preprocessor_cfg.get('pad_val', 0)
        pixel = [m + pad_val * s for m, s in zip(mean, std)]  # in the normalised (converted) channel order
        if preprocessor_cfg.get('bgr_to_rgb') or preprocessor_cfg.get('rgb_to_bgr'):
            pixel = pixel[::-1]  # the graph's input keeps the loaded order
        return dict(type='mmseg_ext.RawSegDataPreProcessor', pad_pixel=pixel,
                    seg_pad_val=preprocessor_cfg.get('seg_pad_val', 255), test_cfg=preprocessor_cfg.get('test_cfg'))

    def forward(self, data: dict, training: bool = False) -> Dict[str, object]:
        if training:
            raise DeployError('an exported ONNX model cannot be trained')
        data = super().forward(data, training=False)
        samples = data.get('data_samples') or []
        for image, sample in zip(data['inputs'], samples):
            left, right, top, bottom = sample.metainfo.get('img_padding_size', (0, 0, 0, 0))
            height, width = image.shape[-2:]
            if bottom:
                image[:, height - bottom:, :] = self.pad_pixel
            if right:
                image[:, :, width - right:] = self.pad_pixel
            if left or top:  # mmseg pads only right and bottom
                raise DeployError(f'unexpected left/top padding {sample.metainfo["img_padding_size"]}')
        return data


@MODELS.register_module()
class ONNXRuntimeSegmentor(EncoderDecoder):
    """Runs a file written by ``tools/deployment/export_onnx.py`` with ONNX Runtime (default) or OpenVINO; predicts
    as ``EncoderDecoder`` does, with the graph as its ``encode_decode``.

    Args:
        onnx_file: the exported graph (its metadata gives classes, palette and the exported test mode).
        data_preprocessor: normally :class:`RawSegDataPreProcessor` (the graph normalises).
        test_cfg: ``mode`` (``'whole'`` or ``'slide'``), ``crop_size`` and ``stride``; default: the file's.
        threads: the runtime's inference threads (default: the runtime's).
        runtime: ``'onnxruntime'`` or ``'openvino'`` (:func:`~mmseg_ext.deploy.runtime.open_session`).
        precision: ``'float32'``, or ``'bf16'`` (OpenVINO on a CPU with bf16 arithmetic).
    """

    def __init__(self, onnx_file: str, data_preprocessor: Optional[dict] = None, test_cfg: Optional[dict] = None,
                 threads: Optional[int] = None, runtime: str = 'onnxruntime', precision: str = 'float32',
                 init_cfg: Optional[dict] = None):
        # EncoderDecoder's own __init__ builds a backbone and heads; the graph replaces them.
        BaseSegmentor.__init__(self, data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.session = _open_checked_session(onnx_file, runtime, threads, precision, keep=False)
        meta = self.session.meta
        if meta.output != 'logits':
            raise DeployError(f'{onnx_file} outputs {meta.output}; mmseg\'s evaluation resizes logits to each image\'s '
                              'original size before the argmax: export with --output logits')
        if test_cfg is None:
            test_cfg = dict(mode=meta.mode, crop_size=meta.crop_size, stride=meta.stride)
        self.test_cfg = ConfigDict(test_cfg)
        mode = self.test_cfg.setdefault('mode', 'whole')  # EncoderDecoder.inference reads test_cfg.mode
        if mode not in ('whole', 'slide'):
            raise DeployError(f'test mode must be "whole" or "slide", got {mode!r}')
        if mode == 'slide' and meta.shape is not None and tuple(self.test_cfg.crop_size) != tuple(meta.shape):
            crop = tuple(self.test_cfg.crop_size)
            raise DeployError(f'slide crop_size {crop[0]}x{crop[1]} does not fit the static graph of '
                              f'{meta.shape[0]}x{meta.shape[1]} in {onnx_file}: export with --shape {crop[0]} '
                              f'{crop[1]} or --dynamic-shape')
        self.align_corners = meta.align_corners
        self.out_channels = self.num_classes = meta.num_classes
        self.dataset_meta = dict(classes=meta.classes, palette=meta.palette)

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """Logits of the graph at the input's size (mmseg's ``encode_decode`` on an image or a window)."""
        return self.session(inputs)

    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        raise DeployError('an exported ONNX model gives logits only, not backbone features')

    def loss(self, inputs: Tensor, data_samples) -> dict:
        raise DeployError('an exported ONNX model cannot be trained')

    def _forward(self, inputs: Tensor, data_samples=None) -> Tensor:
        return self.encode_decode(inputs, [])


def onnx_model_config(model_cfg: dict, onnx_file: str, threads: Optional[int] = None, runtime: str = 'onnxruntime',
                      precision: str = 'float32') -> ConfigDict:
    """The segmentor running ``onnx_file`` with ``runtime`` in place of ``model_cfg``, checked against it.

    The config's test mode, crop and stride are used (so ``--cfg-options model.test_cfg...`` works), with
    the file's number of classes and normalisation checked against the config's. The file is opened here,
    so that a runtime which cannot load it, or cannot run ``precision`` on this CPU, stops before the
    runner starts; the segmentor built from the returned config takes over that session.

    Raises:
        DeployError: for a missing or unreadable file, one whose classes, normalisation or static input
            size do not match the config (both values named), or a runtime or precision that cannot run it.
    """
    meta = _open_checked_session(onnx_file, runtime, threads, precision, keep=True).meta
    heads = model_cfg.get('decode_head')
    last_head = heads[-1] if isinstance(heads, (list, tuple)) else heads
    config_classes = (last_head or {}).get('num_classes')
    if config_classes is not None and config_classes != meta.num_classes:
        raise DeployError(f'{onnx_file} predicts {meta.num_classes} classes but the config\'s decode head has '
                          f'{config_classes}')
    preprocessor = dict(model_cfg.get('data_preprocessor') or {})
    for key, default in (('mean', []), ('std', [])):
        configured = [float(v) for v in (preprocessor.get(key) or default)]
        if configured and [round(v, 5) for v in configured] != [round(v, 5) for v in getattr(meta, key)]:
            raise DeployError(f'{onnx_file} normalises with {key} {getattr(meta, key)} but the config\'s '
                              f'data_preprocessor has {configured}')
    if bool(preprocessor.get('bgr_to_rgb')) != meta.bgr_to_rgb:
        raise DeployError(f'{onnx_file} was exported with bgr_to_rgb={meta.bgr_to_rgb} but the config has '
                          f'{bool(preprocessor.get("bgr_to_rgb"))}')
    test_cfg = dict(model_cfg.get('test_cfg') or dict(mode=meta.mode, crop_size=meta.crop_size, stride=meta.stride))
    test_cfg.setdefault('mode', 'whole')
    if test_cfg['mode'] == 'slide' and meta.shape is not None and tuple(test_cfg['crop_size']) != tuple(meta.shape):
        crop = tuple(test_cfg['crop_size'])
        raise DeployError(f'{onnx_file} takes {meta.shape[0]}x{meta.shape[1]} inputs but the config slides '
                          f'{crop[0]}x{crop[1]} windows: export with --shape {crop[0]} {crop[1]} or --dynamic-shape')
    return ConfigDict(type='mmseg_ext.ONNXRuntimeSegmentor', onnx_file=onnx_file, threads=threads, runtime=runtime,
                      precision=precision, data_preprocessor=RawSegDataPreProcessor.from_config(preprocessor),
                      test_cfg=test_cfg)


def use_onnx_model(cfg: Config, onnx_file: str, threads: Optional[int] = None, runtime: str = 'onnxruntime',
                   precision: str = 'float32') -> None:
    """Make ``cfg`` test ``onnx_file`` with ``runtime`` instead of a checkpoint (also inside a TTA wrapper);
    in place."""
    if cfg.get('launcher', 'none') != 'none':
        raise DeployError(f'an ONNX model is evaluated in one process (the runtime has its own threads), '
                          f'not with --launcher {cfg.launcher}')
    wrapped = 'module' in cfg.model
    model_cfg = cfg.model.module if wrapped else cfg.model
    replacement = onnx_model_config(model_cfg, onnx_file, threads, runtime, precision)
    if wrapped:
        cfg.model.module = replacement
    else:
        cfg.model = replacement
    cfg.load_from = None


def onnx_inferencer(config: str, onnx_file: str, device: str = 'cpu', runtime: str = 'onnxruntime',
                    precision: str = 'float32'):
    """mmseg's ``MMSegInferencer`` running ``onnx_file`` with ``runtime`` (classes and palette from the file)."""
    from mmseg.apis import MMSegInferencer

    from mmseg_ext.launch import load_run_config

    class OnnxSegInferencer(MMSegInferencer):

        def _load_weights_to_model(self, model, checkpoint, cfg) -> None:
            """The ONNX file holds the weights, and the model took its class names from it."""

    if device != 'cpu':
        raise DeployError(f'an exported ONNX model runs on the CPU here; got --device {device}')
    cfg = load_run_config(config)
    use_onnx_model(cfg, onnx_file, runtime=runtime, precision=precision)
    return OnnxSegInferencer(model=cfg, weights=None, device=device)
