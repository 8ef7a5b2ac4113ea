"""What an exported file carries besides the graph, and opening such a file with one clear error.

The record lives in the ONNX file's ``metadata_props`` under :data:`METADATA_KEY` as JSON, so the file
is self-contained: the runtime needs no config to know the classes, the test mode or the input layout.
"""
import json
import os.path as osp
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

__all__ = ['DeployError', 'DeployMetadata', 'METADATA_KEY', 'INPUT_NAME', 'read_metadata']

METADATA_KEY = 'mmseg_ext'
INPUT_NAME = 'image'
# What the graph's input holds: images as mmseg's LoadImageFromFile gives them (cv2's BGR order, 0-255),
# transposed to NCHW and cast to float32; the graph normalises them itself.
INPUT_LAYOUT = 'NCHW float32, channel order as loaded (BGR for cv2/mmcv), pixel values 0-255, not normalised'


class DeployError(ValueError):
    """An exported file, or an input given to it, that cannot be used as asked."""


@dataclass
class DeployMetadata:
    """The facts the ONNX Runtime segmentor and the tools need about an exported segmentor."""
    num_classes: int
    classes: List[str]
    palette: List[List[int]]
    output: str  # 'logits' (N, C, H, W) float32 or 'labels' (N, 1, H, W) integer
    shape: Optional[Tuple[int, int]]  # (H, W) of a static graph; None when height and width are free
    size_divisor: Optional[int] = None  # a dynamic graph is exact for sizes divisible by this
    mode: str = 'whole'  # the config's test mode, 'whole' or 'slide'
    crop_size: Optional[Tuple[int, int]] = None
    stride: Optional[Tuple[int, int]] = None
    align_corners: bool = False
    mean: List[float] = field(default_factory=list)
    std: List[float] = field(default_factory=list)
    bgr_to_rgb: bool = False
    input_layout: str = INPUT_LAYOUT
    opset: int = 17
    fused_conv_bn: bool = False
    quantized: Optional[str] = None
    config: str = ''
    checkpoint: str = ''

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> 'DeployMetadata':
        values = json.loads(text)
        for key in ('shape', 'crop_size', 'stride'):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def read_metadata(custom_metadata: dict, path: str) -> DeployMetadata:
    """The record in a session's ``custom_metadata_map``; :class:`DeployError` if the file has none."""
    if METADATA_KEY not in custom_metadata:
        raise DeployError(f'{path} has no {METADATA_KEY} metadata: export it with tools/deployment/export_onnx.py')
    try:
        return DeployMetadata.from_json(custom_metadata[METADATA_KEY])
    except (ValueError, TypeError) as error:
        raise DeployError(f'{path}: unreadable {METADATA_KEY} metadata ({error})') from None


def check_onnx_path(path: str) -> None:
    if not osp.isfile(path):
        raise DeployError(f'ONNX file not found: {path}')
