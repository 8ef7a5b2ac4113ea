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
``DepthToSpace``, which runs as ``QLinearConv`` (ONNX Runtime has no integer ConvTranspose), and a ReLU
after that ``DepthToSpace`` moves before it.

After quantising, max-pooling and ``DepthToSpace`` are rewritten to run on the uint8 tensors channels-last
(:func:`uint8_channels_last`, same values). ONNX Runtime runs ``QLinearConv`` channels-last with a
Transpose on each side and cancels neighbouring Transposes only through nodes whose every input arrives
channels-last; a channels-first MaxPool (ERFNet's downsamplers pool the quantised image) or a
``DepthToSpace`` (it has no channels-last kernel) otherwise keeps the rest of the network channels-first,
with a Transpose pair around every group of convolutions.
"""
import copy
import os.path as osp
import tempfile
from collections import Counter
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.config import Config

from mmseg_ext.datasets.demo_scenes import write_demo_dataset
from mmseg_ext.preflight import leaf_datasets
from .metadata import INPUT_NAME, DeployError, DeployMetadata
from .segmentor import slide_windows

__all__ = ['calibration_inputs', 'quantize_int8', 'DEFAULT_OP_TYPES', 'CalibrationDataMissing',
           'check_calibration_data', 'benchmark_calibration_config', 'prepare_graph', 'int8_node_counts',
           'INTEGER_NODE_TYPES', 'CONFIG_CALIBRATION', 'DEMO_CALIBRATION', 'uint8_channels_last',
           'optimized_node_counts']

DEFAULT_OP_TYPES = ('Conv', 'MatMul', 'Gemm', 'Relu', 'Add', 'Concat')
# Their consumers are float operators: the integer kernels write float instead of requantising.
FLOAT_OUTPUT_OP_TYPES = ('MatMul', 'Gemm')
# Node types of ONNX Runtime's optimised CPU graph that compute in integers.
INTEGER_NODE_TYPES = ('QLinearConv', 'QGemm', 'MatMulIntegerToFloat', 'QLinearMatMul', 'QLinearAdd', 'QLinearMul',
                      'QLinearConcat', 'QLinearSoftmax', 'ConvInteger', 'MatMulInteger', 'DynamicQuantizeMatMul')
CONFIG_CALIBRATION = "the config's train split"
DEMO_CALIBRATION = 'demo scenes (config data absent)'


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
            f"--cfg-options {key}.data_root=DIR at the dataset (tools/dataset_converters/make_demo_data.py DIR "
            'writes demo scenes in Cityscapes layout)') from None
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
    (:mod:`mmseg_ext.datasets.demo_scenes`) written to ``scratch`` through the config's own test pipeline."""
    try:
        check_calibration_data(cfg)
        return cfg, CONFIG_CALIBRATION
    except CalibrationDataMissing:
        pass
    root = osp.join(scratch, 'demo_scenes')
    write_demo_dataset(root, train=images, val=1)
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


def _relu_before_depth_to_space(model) -> int:
    """``DepthToSpace -> Relu`` -> ``Relu -> DepthToSpace`` (a permutation commutes with an elementwise
    op): the ReLU then fuses into the phase convolution, and the rearrangement's input and output get one
    quantisation range, so it can run on the integers (:func:`_depth_to_space_channels_last`)."""
    import onnx
    consumers: Dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in model.graph.output}
    nodes, moved_relus, count = [], set(), 0
    for node in model.graph.node:
        if id(node) in moved_relus:
            continue
        users = consumers.get(node.output[0], [])
        if (node.op_type == 'DepthToSpace' and len(users) == 1 and users[0].op_type == 'Relu'
                and node.output[0] not in graph_outputs):
            relu = users[0]
            rectified = node.input[0] + '_relu'
            depth_to_space = onnx.helper.make_node('DepthToSpace', [rectified], list(relu.output), name=node.name)
            depth_to_space.attribute.extend(node.attribute)
            nodes += [onnx.helper.make_node('Relu', [node.input[0]], [rectified], name=relu.name), depth_to_space]
            moved_relus.add(id(relu))
            count += 1
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_stale_value_info(model)
    return count


def _drop_stale_value_info(model) -> None:
    """Forget the shapes of tensors that no node produces any more (a rewrite renamed them)."""
    produced = {name for node in model.graph.node for name in node.output}
    kept = [info for info in model.graph.value_info if info.name in produced]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


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
    counts['relu_before_depth_to_space'] = _relu_before_depth_to_space(model)
    model = _fuse_gelu(model)
    counts['gelu_fused'] = sum(node.op_type == 'Gelu' for node in model.graph.node)
    onnx.save(model, out_path)
    return counts


def _products_of_activations(model) -> List[str]:
    """MatMul/Gemm nodes whose second operand is computed (attention products, OCR's gather)."""
    constants = {initializer.name for initializer in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in ('MatMul', 'Gemm') and node.input[1] not in constants]


class _GraphIndex:
    """Producers, consumers and constants of a graph, for the rewrites of the quantised graph."""

    def __init__(self, model):
        from onnx import numpy_helper
        self.producer = {name: node for node in model.graph.node for name in node.output}
        self.consumers: Dict[str, list] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}

    def dequantized_input(self, node):
        """The ``DequantizeLinear`` that feeds ``node``'s first input, or None."""
        producer = self.producer.get(node.input[0])
        return producer if producer is not None and producer.op_type == 'DequantizeLinear' else None

    def only_consumer(self, name: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    def same_quantization(self, dequantize, quantize) -> bool:
        """Whether a DequantizeLinear and a QuantizeLinear use equal scale and zero point."""
        pairs = list(zip(dequantize.input[1:3], quantize.input[1:3]))
        return len(pairs) == 2 and all(
            a in self.constants and b in self.constants and np.array_equal(self.constants[a], self.constants[b])
            for a, b in pairs)


def _replace_nodes(model, replacements: dict, removed: set) -> None:
    """Rebuild the node list: each node id in ``replacements`` becomes its list of nodes, ids in
    ``removed`` go (the replacements consume what they read, so the order stays topological)."""
    nodes = []
    for node in model.graph.node:
        if id(node) in replacements:
            nodes += replacements[id(node)]
        elif id(node) not in removed:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_stale_value_info(model)


_TO_CHANNELS_LAST, _TO_CHANNELS_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]


def _max_pool_channels_last(model) -> int:
    """``DequantizeLinear -> MaxPool`` -> uint8 ``Transpose -> com.microsoft.NhwcMaxPool -> Transpose ->
    DequantizeLinear`` (or straight into the pooled tensor's own ``QuantizeLinear`` when it has the same
    parameters): the maximum commutes with the (increasing) dequantisation, so the values are equal.

    ONNX Runtime runs a uint8 MaxPool channels-last only when a channels-last Transpose feeds it, which
    ERFNet's first downsampler (pooling the quantised image) never has: its pooled half of the
    concatenation stays channels-first, so the concatenation, and every residual sum after it, keep
    channels-first with a Transpose pair around each group of convolutions. Written channels-last, every
    layout Transpose of the encoder cancels against its neighbour.
    """
    import onnx
    index = _GraphIndex(model)
    replacements, removed = {}, set()
    for node in model.graph.node:
        dequantize = index.dequantized_input(node) if node.op_type == 'MaxPool' else None
        if (dequantize is None or (len(node.output) > 1 and node.output[1])
                or len(_attributes(node).get('kernel_shape', [])) != 2):  # NhwcMaxPool: images only
            continue
        attributes = {name: value for name, value in _attributes(node).items() if name != 'storage_order'}
        quantized, scale, zero_point = dequantize.input[0], dequantize.input[1], dequantize.input[2]
        channels_last, pooled = node.output[0] + '_nhwc_input', node.output[0] + '_nhwc'
        nodes = [onnx.helper.make_node('Transpose', [quantized], [channels_last], name=node.name + '_to_nhwc',
                                       perm=_TO_CHANNELS_LAST),
                 onnx.helper.make_node('NhwcMaxPool', [channels_last], [pooled], name=node.name + '_nhwc',
                                       domain='com.microsoft', **attributes)]
        requantize = index.only_consumer(node.output[0])
        if (requantize is not None and requantize.op_type == 'QuantizeLinear'
                and index.same_quantization(dequantize, requantize)):
            nodes.append(onnx.helper.make_node('Transpose', [pooled], list(requantize.output),
                                               name=node.name + '_to_nchw', perm=_TO_CHANNELS_FIRST))
            removed.add(id(requantize))
        else:
            channels_first = node.output[0] + '_quantized'
            nodes += [onnx.helper.make_node('Transpose', [pooled], [channels_first], name=node.name + '_to_nchw',
                                            perm=_TO_CHANNELS_FIRST),
                      onnx.helper.make_node('DequantizeLinear', [channels_first, scale, zero_point],
                                            list(node.output[:1]), name=node.name + '_dequantize')]
        replacements[id(node)] = nodes
        if len(index.consumers[dequantize.output[0]]) == 1:
            removed.add(id(dequantize))
    _replace_nodes(model, replacements, removed)
    return len(replacements)


def _depth_to_space_channels_last(model) -> int:
    """``DequantizeLinear -> DepthToSpace (DCR) -> QuantizeLinear`` with equal parameters on both sides ->
    uint8 ``Transpose -> Reshape (N, H, W, b, b, C) -> Transpose (N, H, b, W, b, C) -> Reshape -> Transpose``:
    the same permutation of the same integers.

    ONNX Runtime has no channels-last DepthToSpace and cannot move a layout Transpose through one, so the
    upsamplers' phase interleave (:func:`_conv_transpose_as_phases`) ran in float, channels-first, between
    Transposes. Channels-last it is one uint8 Transpose; the layout Transposes around it cancel against
    the convolutions'. The output shape is computed from the input's, so dynamic shapes work.
    """
    import onnx
    from onnx import numpy_helper
    index = _GraphIndex(model)
    replacements, removed = {}, set()
    for node in model.graph.node:
        dequantize = index.dequantized_input(node) if node.op_type == 'DepthToSpace' else None
        requantize = index.only_consumer(node.output[0]) if dequantize is not None else None
        mode = _attributes(node).get('mode', b'DCR')
        if (requantize is None or requantize.op_type != 'QuantizeLinear' or mode not in (b'DCR', 'DCR')
                or not index.same_quantization(dequantize, requantize)):
            continue
        block = _attributes(node)['blocksize']
        name = node.name or node.output[0]
        constants = {name + '_blocks_shape': [0, 0, 0, block, block, -1],
                     name + '_spatial_factor': [1, block, block, 1], name + '_depth_factor': [1, 1, 1, block * block]}
        model.graph.initializer.extend(numpy_helper.from_array(np.array(value, np.int64), key)
                                       for key, value in constants.items())
        blocks_shape, spatial_factor, depth_factor = constants
        channels_last, blocks, interleaved = name + '_nhwc', name + '_blocks', name + '_interleaved'
        in_shape, scaled_shape = name + '_in_shape', name + '_scaled_shape'
        out_shape, merged = name + '_out_shape', name + '_merged'
        make = onnx.helper.make_node
        replacements[id(node)] = [
            make('Transpose', [dequantize.input[0]], [channels_last], name=name + '_to_nhwc', perm=_TO_CHANNELS_LAST),
            make('Reshape', [channels_last, blocks_shape], [blocks], name=name + '_split_depth'),
            make('Transpose', [blocks], [interleaved], name=name + '_interleave', perm=[0, 1, 3, 2, 4, 5]),
            make('Shape', [channels_last], [in_shape], name=name + '_in_shape'),
            make('Mul', [in_shape, spatial_factor], [scaled_shape], name=name + '_spatial_shape'),
            make('Div', [scaled_shape, depth_factor], [out_shape], name=name + '_out_shape'),
            make('Reshape', [interleaved, out_shape], [merged], name=name + '_merge_blocks'),
            make('Transpose', [merged], list(requantize.output), name=name + '_to_nchw', perm=_TO_CHANNELS_FIRST)]
        removed.add(id(requantize))
        if len(index.consumers[dequantize.output[0]]) == 1:
            removed.add(id(dequantize))
    _replace_nodes(model, replacements, removed)
    return len(replacements)


def uint8_channels_last(model) -> Dict[str, int]:
    """Rewrite a quantised (QDQ) graph in place so that its max-pooling and depth-to-space run on the
    integers, channels-last (same values); returns how many nodes each rewrite changed."""
    counts = dict(max_pool_channels_last=_max_pool_channels_last(model),
                  depth_to_space_channels_last=_depth_to_space_channels_last(model))
    if any(counts.values()) and not any(opset.domain == 'com.microsoft' for opset in model.opset_import):
        import onnx
        model.opset_import.append(onnx.helper.make_opsetid('com.microsoft', 1))
    return counts


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
        quantize_static(prepared, quantized, _Reader(inputs), quant_format=QuantFormat.QDQ, per_channel=True,
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
