"""Value-preserving ONNX graph rewrites around int8 quantisation (:mod:`mmseg_ext.deploy.quantize`).

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
from typing import Dict

import numpy as np

__all__ = ['prepare_graph', 'uint8_channels_last']


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
