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

The float graph is prepared first and the quantised one rewritten after, by value-preserving rewrites
(:mod:`mmseg_ext.deploy.graph_rewrites`); the calibration images come from :mod:`mmseg_ext.deploy.calibration`.
"""
import os.path as osp
import tempfile
from collections import Counter
from typing import Dict, List, Sequence

from mmengine.config import Config

from .calibration import CONFIG_CALIBRATION, CalibrationReader, calibration_inputs
from .graph_rewrites import prepare_graph, uint8_channels_last
from .metadata import DeployError, DeployMetadata

__all__ = ['quantize_int8', 'DEFAULT_OP_TYPES', 'int8_node_counts', 'INTEGER_NODE_TYPES', 'optimized_node_counts']

DEFAULT_OP_TYPES = ('Conv', 'MatMul', 'Gemm', 'Relu', 'Add', 'Concat')
# Their consumers are float operators: the integer kernels write float instead of requantising.
FLOAT_OUTPUT_OP_TYPES = ('MatMul', 'Gemm')
# Node types of ONNX Runtime's optimised CPU graph that compute in integers.
INTEGER_NODE_TYPES = ('QLinearConv', 'QGemm', 'MatMulIntegerToFloat', 'QLinearMatMul', 'QLinearAdd', 'QLinearMul',
                      'QLinearConcat', 'QLinearSoftmax', 'ConvInteger', 'MatMulInteger', 'DynamicQuantizeMatMul')


def _products_of_activations(model) -> List[str]:
    """MatMul/Gemm nodes whose second operand is computed (attention products, OCR's gather)."""
    constants = {initializer.name for initializer in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in ('MatMul', 'Gemm') and node.input[1] not in constants]


def optimized_node_counts(path: str) -> Counter:
    """How many nodes of each type ONNX Runtime's optimised CPU graph of ``path`` holds."""
    import onnx
    import onnxruntime as ort

    from .runtime import session_options
    with tempfile.TemporaryDirectory() as work:
        options = session_options(threads=1)
        options.optimized_model_filepath = osp.join(work, 'optimized.onnx')
        ort.InferenceSession(path, sess_options=options, providers=['CPUExecutionProvider'])
        return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def int8_node_counts(path: str) -> Dict[str, int]:
    """How many nodes of each integer type (:data:`INTEGER_NODE_TYPES`) ONNX Runtime's optimised CPU
    graph of ``path`` holds: what actually runs in int8."""
    counts = optimized_node_counts(path)
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
        quantized = osp.join(work, 'quantized.onnx')
        quantize_static(prepared, quantized, CalibrationReader(inputs), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=list(op_types) if op_types else None, nodes_to_exclude=excluded,
                        extra_options=dict(OpTypesToExcludeOutputQuantization=list(FLOAT_OUTPUT_OP_TYPES)))
        model = onnx.load(quantized)
        uint8_channels_last(model)
        onnx.save(model, out_path)
    operators = ', '.join(op_types) if op_types else 'all quantisable operators'
    meta.quantized = (f'int8 (QDQ, uint8 activations, per-channel int8 weights, {len(inputs)} calibration inputs '
                      f'from {calibration}, {operators})')
    write_metadata(out_path, meta)
    return meta
