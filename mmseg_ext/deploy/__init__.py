"""Deployment: ONNX export of mmseg segmentors and a segmentor that runs the file (ONNX Runtime or OpenVINO)
and predicts as mmseg does.

``tools/deployment/export_onnx.py`` writes the file (:mod:`.export`); :class:`ONNXRuntimeSegmentor` runs it inside
mmengine's runner and mmseg's inferencer (:mod:`.segmentor`); :mod:`.runtime` holds the session
settings; :mod:`.quantize` the int8 path, with its calibration images (:mod:`.calibration`) and
graph rewrites (:mod:`.graph_rewrites`). Importing this package registers the segmentor and its data
preprocessor in the plugin registry (``mmseg_ext.ONNXRuntimeSegmentor``).
"""
from typing import Optional

from .metadata import DeployError, DeployMetadata
from .runtime import RUNTIMES, OnnxSegmentorSession, OpenVinoSegmentorSession, open_session, session_options
from .segmentor import (ONNXRuntimeSegmentor, RawSegDataPreProcessor, onnx_inferencer, onnx_model_config,
                        slide_windows, use_onnx_model)

__all__ = ['DeployError', 'DeployMetadata', 'OnnxSegmentorSession', 'OpenVinoSegmentorSession', 'open_session',
           'RUNTIMES', 'session_options', 'ONNXRuntimeSegmentor',
           'RawSegDataPreProcessor', 'onnx_model_config', 'slide_windows', 'use_onnx_model', 'onnx_inferencer',
           'is_onnx_file', 'check_runtime_choice']


def is_onnx_file(path: str) -> bool:
    """Whether the tools should treat ``path`` as an exported model rather than a checkpoint."""
    return str(path).lower().endswith('.onnx')


def check_runtime_choice(path: str, runtime: Optional[str]) -> None:
    """Refuse a ``--runtime`` given with a PyTorch checkpoint (runtimes run exported files), in one line."""
    if runtime and not is_onnx_file(path):
        raise DeployError(f'--runtime {runtime} runs an exported .onnx file, not the checkpoint {path}: export it '
                          'with tools/deployment/export_onnx.py, or drop --runtime')
