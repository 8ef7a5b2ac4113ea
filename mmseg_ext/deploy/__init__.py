"""Deployment: ONNX export of mmseg segmentors and an ONNX Runtime segmentor that predicts as mmseg does.

``tools/export_onnx.py`` writes the file (:mod:`.export`); :class:`ONNXRuntimeSegmentor` runs it inside
mmengine's runner and mmseg's inferencer (:mod:`.segmentor`); :mod:`.runtime` holds the session
settings; :mod:`.quantize` the int8 path. Importing this package registers the segmentor and its data
preprocessor in the plugin registry (``mmseg_ext.ONNXRuntimeSegmentor``).
"""
from .metadata import DeployError, DeployMetadata
from .runtime import OnnxSegmentorSession, session_options
from .segmentor import (ONNXRuntimeSegmentor, RawSegDataPreProcessor, onnx_inferencer, onnx_model_config,
                        slide_windows, use_onnx_model)

__all__ = ['DeployError', 'DeployMetadata', 'OnnxSegmentorSession', 'session_options', 'ONNXRuntimeSegmentor',
           'RawSegDataPreProcessor', 'onnx_model_config', 'slide_windows', 'use_onnx_model', 'onnx_inferencer',
           'is_onnx_file']


def is_onnx_file(path: str) -> bool:
    """Whether the tools should treat ``path`` as an exported model rather than a checkpoint."""
    return str(path).lower().endswith('.onnx')
