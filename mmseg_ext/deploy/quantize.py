"""int8 static quantisation of an exported graph for ONNX Runtime's CPU provider.

What ONNX Runtime runs fast on x86 with AVX512_VNNI (docs/deploy.md, "int8", says why in full):

* **QDQ format, uint8 activations, int8 weights (U8S8)**, weights per output channel, activations per
  tensor from MinMax calibration. The optimiser fuses each ``DequantizeLinear -> Conv -> QuantizeLinear``
  group into ``QLinearConv`` (run channels-last by its NHWC transformer), ``Gemm`` into ``QGemm`` and
  ``MatMul`` with a constant weight into ``MatMulIntegerToFloat``; VNNI's ``vpdpbusd`` multiplies unsigned
  by signed bytes, so U8S8 is its native form (S8S8 and the QOperator format were slower here).
* **ReLU, residual ``Add`` and ``Concat`` quantised with the convolutions**: a quantised ReLU is removed
  and its range given to the convolution's output, so convolution+ReLU is one ``QLinearConv``, a residual
  sum a ``QLinearAdd`` and a concatenation a ``QLinearConcat``; with convolutions alone, every ReLU leaves a
  float dequantise/requantise pair between two integer convolutions.
* **Products of two activations stay float** (attention's ``Q K^T`` and ``P V``, OCR's spatial gather)
  and so do Softmax, LayerNormalization, GELU and Resize: ONNX Runtime's ``QLinearMatMul`` and
  ``QLinearSoftmax`` were slower than float (the score matrices are wide, the reductions short), and a
  per-tensor uint8 scale cannot hold a softmax over thousands of positions (OCR's weights near 1/HW).
* **Outputs of ``MatMul``/``Gemm`` are not requantised**: their consumers (LayerNormalization, GELU,
  residual sums, the next accumulation) are float, so the integer kernels write float directly.

Before quantising, the float graph is prepared (:func:`prepare_graph`): ONNX Runtime's own pre-processing
(shape inference, constant folding, Conv+BN folding), then three rewrites that change no value: a ``Gemm``
that adds a computed tensor is split into ``Gemm`` + ``Add`` (the quantiser only takes constant biases;
SegFormer's head accumulates its fusion that way), GELU's five operators are fused into one ``Gelu``
(otherwise the dequantised input, duplicated per consumer, defeats ONNX Runtime's own fusion), and a
stride-2 3x3 ``ConvTranspose`` (ERFNet's upsamplers) becomes a 2x2 ``Conv`` to four phases plus
``DepthToSpace``, which runs as ``QLinearConv`` (ONNX Runtime has no integer ConvTranspose).
"""
import copy
import os.path as osp
import subprocess
import sys
import tempfile
from collections import Counter
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.config import Config

from mmseg_ext.preflight import leaf_datasets
from .metadata import INPUT_NAME, DeployError, DeployMetadata
from .segmentor import slide_windows

__all__ = ['calibration_inputs', 'quantize_int8', 'DEFAULT_OP_TYPES', 'CalibrationDataMissing',
           'check_calibration_data', 'benchmark_calibration_config', 'prepare_graph', 'int8_node_counts',
           'INTEGER_NODE_TYPES', 'CONFIG_CALIBRATION', 'DEMO_CALIBRATION']

DEFAULT_OP_TYPES = ('Conv', 'MatMul', 'Gemm', 'Relu', 'Add', 'Concat')
# Their consumers are float operators: the integer kernels write float instead of requantising.
FLOAT_OUTPUT_OP_TYPES = ('MatMul', 'Gemm')
# Node types of ONNX Runtime's optimised CPU graph that compute in integers.
INTEGER_NODE_TYPES = ('QLinearConv', 'QGemm', 'MatMulIntegerToFloat', 'QLinearMatMul', 'QLinearAdd', 'QLinearMul',
                      'QLinearConcat', 'QLinearSoftmax', 'ConvInteger', 'MatMulInteger', 'DynamicQuantizeMatMul')
CONFIG_CALIBRATION = "the config's train split"
DEMO_CALIBRATION = 'demo scenes (config data absent)'
_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


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
            f"--cfg-options {key}.data_root=DIR at the dataset (tools/make_demo_data.py DIR writes demo scenes "
            'in Cityscapes layout)') from None
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
    (``tools/make_demo_data.py``) written to ``scratch`` through the config's own test pipeline."""
    try:
        check_calibration_data(cfg)
        return cfg, CONFIG_CALIBRATION
    except CalibrationDataMissing:
        pass
    root = osp.join(scratch, 'demo_scenes')
    script = osp.join(_REPO, 'tools', 'make_demo_data.py')
    if not osp.isfile(script):
        raise CalibrationDataMissing(f'the config\'s train images are absent and {script} (the demo scenes) is not '
                                     'there either: run from a checkout of mmseg_ext')
    subprocess.run([sys.executable, script, root, '--train', str(images), '--val', '1'], check=True,
                   stdout=subprocess.DEVNULL)
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


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of inputs."""

    def __init__(self, inputs: List[np.ndarray]):
        self._inputs = iter(inputs)

    def get_next(self) -> Optional[dict]:
        batch = next(self._inputs, None)
        return None if batch is None else {INPUT_NAME: batch}


def _attributes(node) -> dict:
    import onnx
    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _split_computed_gemm_bias(model) -> int:
    """``Gemm(A, B, C)`` with a computed ``C`` (and beta 1) -> ``Gemm(A, B)`` + ``Add(., C)``."""
    import onnx
    constants = {initializer.name for initializer in model.graph.initializer}
    nodes, count = [], 0
    for node in model.graph.node:
        attributes = _attributes(node)
        if (node.op_type == 'Gemm' and len(node.input) == 3 and node.input[2] and node.input[2] not in constants
                and attributes.get('beta', 1.0) == 1.0):
            product = node.output[0] + '_product'
            gemm = onnx.helper.make_node('Gemm', list(node.input[:2]), [product], name=node.name + '_product')
            gemm.attribute.extend(a for a in node.attribute if a.name != 'beta')
            nodes += [gemm, onnx.helper.make_node('Add', [product, node.input[2]], list(node.output),
                                                  name=node.name + '_bias')]
            count += 1
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


# ConvTranspose(3x3, stride 2, pad 1, output_padding 1) as a 2x2 convolution per output phase: the even
# output rows (columns) see input row m through kernel row 1; the odd ones rows m and m+1 through kernel
# rows 2 and 0. {phase: {input offset: kernel index}}
_SUBPIXEL_TAPS = {0: {0: 1}, 1: {0: 2, 1: 0}}


def _is_subpixel_conv_transpose(node, constants: set) -> bool:
    attributes = _attributes(node)
    return (node.op_type == 'ConvTranspose' and node.input[1] in constants
            and list(attributes.get('kernel_shape', [3, 3])) == [3, 3]
            and list(attributes.get('strides', [1, 1])) == [2, 2] and list(attributes.get('pads', [0] * 4)) == [1] * 4
            and list(attributes.get('output_padding', [0, 0])) == [1, 1] and attributes.get('group', 1) == 1
            and list(attributes.get('dilations', [1, 1])) == [1, 1] and 'output_shape' not in attributes
            and attributes.get('auto_pad', b'NOTSET') in (b'NOTSET', 'NOTSET'))


def _conv_transpose_as_phases(model) -> int:
    """Stride-2 3x3 ConvTranspose -> 2x2 Conv to 4 x C_out phase channels + DepthToSpace (DCR), exactly."""
    import onnx
    from onnx import numpy_helper
    initializers = {initializer.name: initializer for initializer in model.graph.initializer}
    nodes, count = [], 0
    for node in model.graph.node:
        if not _is_subpixel_conv_transpose(node, set(initializers)):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])  # (C_in, C_out, 3, 3)
        out_channels = weight.shape[1]
        phases = np.zeros((4 * out_channels, weight.shape[0], 2, 2), weight.dtype)
        for row_phase, row_taps in _SUBPIXEL_TAPS.items():
            for col_phase, col_taps in _SUBPIXEL_TAPS.items():
                phase = 2 * row_phase + col_phase
                block = slice(phase * out_channels, (phase + 1) * out_channels)
                for dy, ky in row_taps.items():
                    for dx, kx in col_taps.items():
                        phases[block, :, dy, dx] = weight[:, :, ky, kx].T
        inputs = [node.input[0], node.input[1] + '_phases']
        model.graph.initializer.append(numpy_helper.from_array(phases, inputs[1]))
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(initializers[node.input[2]])
            inputs.append(node.input[2] + '_phases')
            model.graph.initializer.append(numpy_helper.from_array(np.tile(bias, 4), inputs[2]))
        phase_output = node.output[0] + '_phases'
        nodes += [onnx.helper.make_node('Conv', inputs, [phase_output], name=node.name + '_phases',
                                        kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
                  onnx.helper.make_node('DepthToSpace', [phase_output], list(node.output),
                                        name=node.name + '_interleave', blocksize=2, mode='DCR')]
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    kept = [initializer for initializer in model.graph.initializer if initializer.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return count


def _fuse_gelu(model):
    """GELU's Div/Erf/Add/Mul/Mul -> one com.microsoft ``Gelu`` (onnxruntime.transformers' fusion)."""
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.onnx_model import OnnxModel
    wrapped = OnnxModel(model)
    FusionGelu(wrapped).apply()
    wrapped.prune_graph()
    return wrapped.model


def prepare_graph(float_path: str, out_path: str) -> Dict[str, int]:
    """Write the float graph of ``float_path``, ready to quantise, to ``out_path`` (same values); returns
    how many nodes each rewrite changed."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process
    quant_pre_process(float_path, out_path, skip_symbolic_shape=True)
    model = onnx.load(out_path)
    counts = dict(gemm_bias_split=_split_computed_gemm_bias(model),
                  conv_transpose_as_phases=_conv_transpose_as_phases(model))
    model = _fuse_gelu(model)
    counts['gelu_fused'] = sum(node.op_type == 'Gelu' for node in model.graph.node)
    onnx.save(model, out_path)
    return counts


def _products_of_activations(model) -> List[str]:
    """MatMul/Gemm nodes whose second operand is computed (attention products, OCR's gather)."""
    constants = {initializer.name for initializer in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in ('MatMul', 'Gemm') and node.input[1] not in constants]


def int8_node_counts(path: str) -> Dict[str, int]:
    """How many nodes of each integer type (:data:`INTEGER_NODE_TYPES`) ONNX Runtime's optimised CPU
    graph of ``path`` holds: what actually runs in int8."""
    import onnx
    import onnxruntime as ort

    from .runtime import session_options
    with tempfile.TemporaryDirectory() as work:
        options = session_options(threads=1)
        options.optimized_model_filepath = osp.join(work, 'optimized.onnx')
        ort.InferenceSession(path, sess_options=options, providers=['CPUExecutionProvider'])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
    counts = Counter(node.op_type for node in nodes)
    return {op: counts[op] for op in INTEGER_NODE_TYPES if counts[op]}


def quantize_int8(float_path: str, out_path: str, cfg: Config, calibration_images: int,
                  op_types: Sequence[str] = DEFAULT_OP_TYPES, calibration: str = CONFIG_CALIBRATION) -> DeployMetadata:
    """Write the int8 version of ``float_path`` to ``out_path``; returns its metadata.

    ``op_types``: the ONNX operators to quantise (empty: all onnxruntime can); MatMul/Gemm of two computed
    operands stay float whatever the list. ``calibration`` names where ``cfg``'s train images come from (it
    is recorded in the file's metadata).

    Raises:
        CalibrationDataMissing: the config's train images are absent (one line naming the option to set).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .export import write_metadata
    from .metadata import read_metadata
    model = onnx.load(float_path, load_external_data=False)
    meta = read_metadata({p.key: p.value for p in model.metadata_props}, float_path)
    if meta.output != 'logits':
        raise DeployError('int8 quantisation needs a logits graph (the argmax is not quantised): drop --output labels')
    inputs = list(calibration_inputs(cfg, meta, calibration_images))
    with tempfile.TemporaryDirectory() as work:
        prepared = osp.join(work, 'prepared.onnx')
        prepare_graph(float_path, prepared)
        excluded = _products_of_activations(onnx.load(prepared))
        quantize_static(prepared, out_path, _Reader(inputs), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=list(op_types) if op_types else None, nodes_to_exclude=excluded,
                        extra_options=dict(OpTypesToExcludeOutputQuantization=list(FLOAT_OUTPUT_OP_TYPES)))
    operators = ', '.join(op_types) if op_types else 'all quantisable operators'
    meta.quantized = (f'int8 (QDQ, uint8 activations, per-channel int8 weights, {len(inputs)} calibration inputs '
                      f'from {calibration}, {operators})')
    write_metadata(out_path, meta)
    return meta
