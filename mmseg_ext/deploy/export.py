"""Export an mmseg segmentor with its test-time preprocessing to ONNX, and check the file against PyTorch.

The exported graph takes raw images (see :data:`~mmseg_ext.deploy.metadata.INPUT_LAYOUT`) and holds the
config's normalisation (channel swap, mean, std of ``data_preprocessor``), the backbone, the decode head
(the last stage of a cascade) and the bilinear resize of the logits to the input size, which is what
mmseg's ``encode_decode`` returns for one image or one sliding window. Padding, sliding windows and the
resize to the original image size stay outside the graph, in :class:`~mmseg_ext.deploy.ONNXRuntimeSegmentor`,
so that one graph serves both test modes as mmseg runs them.
"""
import math
import re
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config

from mmseg_ext.compat import traceable_upsampling
from mmseg_ext.preflight import leaf_datasets
from .metadata import INPUT_NAME, METADATA_KEY, DeployError, DeployMetadata

__all__ = ['DeployableSegmentor', 'dataset_meta', 'default_shape',
           'export_onnx', 'compare_with_pytorch', 'write_metadata', 'OUTPUTS']

OUTPUTS = ('logits', 'labels')


class DeployableSegmentor(nn.Module):
    """Raw images (N, 3, H, W) to logits (N, C, H, W) or labels (N, 1, H, W), as mmseg computes them.

    The channel swap and normalisation use the segmentor's own ``data_preprocessor`` tensors, and the
    logits are resized with mmseg's ``predict_by_feat`` call (bilinear, the head's ``align_corners``).
    """

    def __init__(self, segmentor: nn.Module, output: str = 'logits'):
        super().__init__()
        if output not in OUTPUTS:
            raise DeployError(f'output must be one of {OUTPUTS}, got {output!r}')
        preprocessor = segmentor.data_preprocessor
        self.segmentor = segmentor
        self.output = output
        self.bgr_to_rgb = bool(getattr(preprocessor, 'channel_conversion', False))
        self.normalize = bool(getattr(preprocessor, '_enable_normalize', False))
        if self.normalize:
            self.register_buffer('mean', preprocessor.mean.detach().clone().reshape(1, -1, 1, 1), persistent=False)
            self.register_buffer('std', preprocessor.std.detach().clone().reshape(1, -1, 1, 1), persistent=False)
        self.align_corners = bool(segmentor.align_corners)
        self.num_classes = int(segmentor.out_channels)
        self.label_dtype = torch.uint8 if self.num_classes <= 256 else torch.int64

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.bgr_to_rgb:
            image = image[:, [2, 1, 0]]
        if self.normalize:
            image = (image - self.mean) / self.std
        logits = self.segmentor._forward(image)  # the last stage's output for cascades
        logits = F.interpolate(logits, size=image.shape[2:], mode='bilinear', align_corners=self.align_corners)
        if self.output == 'labels':
            return logits.argmax(dim=1, keepdim=True).to(self.label_dtype)
        return logits


def dataset_meta(cfg: Config, checkpoint_meta: Optional[dict] = None) -> Dict[str, list]:
    """Class names and palette: the checkpoint's ``dataset_meta`` if it has one, else the test dataset's."""
    meta = (checkpoint_meta or {}).get('dataset_meta') or {}
    if meta.get('classes') and meta.get('palette'):
        return dict(classes=list(meta['classes']), palette=[list(map(int, c)) for c in meta['palette']])
    from mmseg.registry import DATASETS
    dataset_cfg, _ = next(leaf_datasets((cfg.get('test_dataloader') or {}).get('dataset') or {}))
    info: Dict[str, Any] = {}
    dataset_cls = DATASETS.get(dataset_cfg['type']) if dataset_cfg.get('type') else None
    if dataset_cls is not None:
        info.update(getattr(dataset_cls, 'METAINFO', {}))
    info.update(dataset_cfg.get('metainfo') or {})
    return dict(classes=list(info.get('classes', [])), palette=[list(map(int, c)) for c in info.get('palette', [])])


def default_shape(cfg: Config) -> Tuple[int, int]:
    """The input size to export: the sliding window in slide mode, else the test pipeline's resize scale,
    else the data preprocessor's size."""
    test_cfg = cfg.model.get('test_cfg') or {}
    if test_cfg.get('mode') == 'slide':
        return tuple(test_cfg['crop_size'])
    pipeline = ((cfg.get('test_dataloader') or {}).get('dataset') or {}).get('pipeline') or []
    for step in pipeline:
        if step.get('type') == 'Resize' and step.get('scale') is not None:
            width, height = step['scale']  # mmcv's scale is (w, h)
            return int(height), int(width)
    size = (cfg.model.get('data_preprocessor') or {}).get('size')
    if size:
        return tuple(size)
    raise DeployError('the config names no test size (no slide crop, Resize scale or data_preprocessor size): '
                      'give --shape H W')


def _operator_in(error: BaseException) -> Optional[str]:
    """The operator an exporter error complains about, e.g. ``aten::unique_dim`` or a Python function."""
    text = str(error)
    for pattern in (r"operator '([\w:.]+)'", r'Python operator (\w+)', r'(aten::\w+|prim::\w+|onnx::\w+)'):
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    return None


def _modules_calling(wrapper: nn.Module, example: torch.Tensor, operator: str) -> List[str]:
    """Modules (``path (Class)``) whose traced forward calls ``operator``, from TorchScript scope names."""
    try:
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, (example, ), check_trace=False, strict=False)
    except Exception:  # the trace itself failed: no scopes to report
        return []
    graph = traced.inlined_graph
    names = []

    def visit(block) -> None:
        for node in block.nodes():
            kind = node.kind()
            matches = kind == operator or (kind == 'prim::PythonOp' and node.pyname() == operator)
            if matches:
                scope = node.scopeName().split('/')[-1].replace('__module.', '')
                if scope.startswith('segmentor.'):
                    scope = scope[len('segmentor.'):]
                names.append(scope)
            for sub in node.blocks():
                visit(sub)

    visit(graph)
    modules = dict(wrapper.segmentor.named_modules())
    described = []
    for name in dict.fromkeys(names):
        module = modules.get(name)
        described.append(f'{name} ({type(module).__name__})' if module is not None else name)
    return described


def export_onnx(wrapper: DeployableSegmentor, path: str, shape: Tuple[int, int], dynamic: bool = False,
                opset: int = 17) -> None:
    """Write the graph of ``wrapper`` to ``path`` (TorchScript exporter).

    Raises:
        DeployError: if an operator has no ONNX form, naming the operator and the modules that call it.
    """
    example = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(0)) * 255
    output = wrapper.output
    axes = None
    if dynamic:
        axes = {INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'}, output: {0: 'batch', 2: 'height', 3: 'width'}}
    try:
        with torch.no_grad(), traceable_upsampling(wrapper):
            torch.onnx.export(wrapper, (example, ), path, input_names=[INPUT_NAME], output_names=[output],
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as error:
        operator = _operator_in(error)
        if operator is None:
            raise
        modules = _modules_calling(wrapper, example, operator)
        where = ', '.join(modules) if modules else 'a module the trace could not name'
        raise DeployError(f'cannot export operator {operator} (ONNX opset {opset}) used by {where}') from None


def write_metadata(path: str, meta: DeployMetadata) -> None:
    """Store ``meta`` in the file's ``metadata_props``."""
    import onnx
    model = onnx.load(path)
    for entry in list(model.metadata_props):
        if entry.key == METADATA_KEY:
            model.metadata_props.remove(entry)
    model.metadata_props.add(key=METADATA_KEY, value=meta.to_json())
    onnx.save(model, path)


def compare_with_pytorch(wrapper: DeployableSegmentor, path: str, shape: Tuple[int, int],
                         seed: int = 1) -> Dict[str, float]:
    """Run the file in onnxruntime and ``wrapper`` in PyTorch on one random image of ``shape``.

    Returns the largest absolute difference, the logit range and their ratio (for labels: the share of
    pixels whose label differs).
    """
    from .runtime import OnnxSegmentorSession
    image = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(seed)) * 255
    with torch.no_grad():
        expected = wrapper(image)
    actual = OnnxSegmentorSession(path)(image)
    if wrapper.output == 'labels':
        return dict(mismatch=float((actual.long() != expected.long()).float().mean()))
    difference = float((actual - expected).abs().max())
    value_range = float(expected.max() - expected.min())
    return dict(max_abs_diff=difference, logit_range=value_range, relative=difference / max(value_range, 1e-12))


def export_segmentor(model: nn.Module, cfg: Config, path: str, shape: Optional[Tuple[int, int]] = None,
                     dynamic: bool = False, opset: int = 17, output: str = 'logits', fused_conv_bn: bool = False,
                     checkpoint_meta: Optional[dict] = None, config_name: str = '',
                     checkpoint_name: str = '') -> DeployMetadata:
    """Export ``model`` (built from ``cfg``, weights loaded, eval mode) with its metadata to ``path``.

    ``shape`` is the static input size, or the example size of a ``dynamic`` graph (default:
    :func:`default_shape`).
    """
    if model.out_channels < 2:
        raise DeployError(f'the decode head has {model.out_channels} output channel (a thresholded binary head); '
                          'only multi-class heads are exported')
    shape = tuple(shape or default_shape(cfg))
    wrapper = DeployableSegmentor(model.eval(), output).eval()
    export_onnx(wrapper, path, shape, dynamic=dynamic, opset=opset)
    test_cfg = cfg.model.get('test_cfg') or {}
    names = dataset_meta(cfg, checkpoint_meta)
    meta = DeployMetadata(
        num_classes=wrapper.num_classes, classes=names['classes'], palette=names['palette'], output=output,
        shape=None if dynamic else shape, mode=test_cfg.get('mode', 'whole'),
        crop_size=tuple(test_cfg['crop_size']) if test_cfg.get('crop_size') else None,
        stride=tuple(test_cfg['stride']) if test_cfg.get('stride') else None, align_corners=wrapper.align_corners,
        mean=wrapper.mean.flatten().tolist() if wrapper.normalize else [],
        std=wrapper.std.flatten().tolist() if wrapper.normalize else [], bgr_to_rgb=wrapper.bgr_to_rgb,
        opset=opset, fused_conv_bn=fused_conv_bn, config=config_name, checkpoint=checkpoint_name)
    write_metadata(path, meta)
    if dynamic:
        meta.size_divisor = exact_size_divisor(wrapper, path, shape)
        write_metadata(path, meta)
    return meta


PARITY_TOLERANCE = 1e-4  # largest logit difference relative to the logit range


def exact_size_divisor(wrapper: DeployableSegmentor, path: str, shape: Tuple[int, int]) -> int:
    """The smallest of 1, 8, 16, 32 such that the dynamic graph at ``path`` reproduces PyTorch on a new
    input size divisible by it.

    A trace freezes Python branches on shapes (e.g. "resize only if the sizes differ") to the example's
    outcome; sizes divisible by the network's output stride take the same branches as a divisible
    example, other sizes may not.

    Raises:
        DeployError: if even sizes divisible by 32 give other logits than PyTorch.
    """
    for divisor in (1, 8, 16, 32):
        if divisor == 1:
            probe = (shape[0] + 5, shape[1] + 11)
        else:
            probe = (math.ceil(shape[0] / divisor + 1) * divisor, math.ceil(shape[1] / divisor + 2) * divisor)
        try:
            report = compare_with_pytorch(wrapper, path, probe)
        except (RuntimeError, DeployError):  # PyTorch or onnxruntime cannot run this size at all
            continue
        if report.get('relative', report.get('mismatch', 1.0)) < PARITY_TOLERANCE:
            return divisor
    raise DeployError(f'the dynamic graph {path} differs from PyTorch on input sizes other than the example '
                      f'{shape[0]}x{shape[1]}: export with a static --shape instead')
