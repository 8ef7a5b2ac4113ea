"""FLOPs by the papers' convention: one multiply-add is one FLOP, attention products included
(:func:`count_flops`, mmengine's ``FlopAnalyzer`` with the handlers below)."""
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

import torch
import torch.nn as nn
from mmengine.analysis.jit_handles import addmm_flop_jit
from torch import Tensor

__all__ = ['count_flops', 'FlopCount', 'FLOP_CONVENTION', 'ATTENTION_FLOP_HANDLES', 'IN_PLACE_FLOP_HANDLES']


def _shape(value: Any, operator: str) -> List[int]:
    from mmengine.analysis.jit_handles import get_shape
    shape = get_shape(value)
    if shape is None:
        raise ValueError(f'{operator}: the traced graph has no complete shape for an input, so its FLOPs '
                         'cannot be counted')
    return list(shape)


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::scaled_dot_product_attention(q, k, v, ...)``: ``q k^T`` and ``softmax(.) v``.

    q ``[..., L, E]``, k ``[..., S, E]``, v ``[..., S, Ev]`` give ``prod(...) * L * S * (E + Ev)``
    multiply-adds; the scaling and softmax are not counted (as mmengine counts no activation).
    """
    query, key, value = (_shape(v, 'scaled_dot_product_attention') for v in inputs[:3])
    batch_heads = math.prod(query[:-2])
    return batch_heads * query[-2] * key[-2] * (query[-1] + value[-1])


def native_mha_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::_native_multi_head_attention``: ``nn.MultiheadAttention``'s fused eval-mode path.

    Arguments: query ``[B, L, E]``, key and value ``[B, S, E]``, embed_dim, num_heads, the stacked
    q/k/v projection and the output projection. Counted as the unfused path is: the three input
    projections, ``q k^T`` and ``softmax(.) v`` over all heads, and the output projection.
    """
    query, key, value = (_shape(v, '_native_multi_head_attention') for v in inputs[:3])
    embed_dims = query[-1]
    batch, num_queries, num_keys = math.prod(query[:-2]), query[-2], key[-2]
    projections = batch * embed_dims * embed_dims * (2 * num_queries + 2 * num_keys)  # q, out; k, v
    attention = batch * num_queries * num_keys * 2 * embed_dims
    return projections + attention


def baddbmm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::baddbmm(input, batch1, batch2, ...)``: the batched product ``[n, c, t] @ [n, t, d]``
    (``nn.MultiheadAttention``'s weights path with a mask); the scaled sum is not counted."""
    first, second = (_shape(v, 'baddbmm') for v in inputs[1:3])
    return math.prod(first) * second[-1]


#: Handlers added to mmengine's ``FlopAnalyzer`` for operators that carry the attention products and
#: that its defaults skip. ``aten::bmm``, ``aten::matmul`` and ``aten::einsum`` (mmseg's
#: ``nn.MultiheadAttention`` with weights, its OCR head) are counted by mmengine's own handlers.
ATTENTION_FLOP_HANDLES: Dict[str, Callable[[List[Any], List[Any]], int]] = {
    'aten::scaled_dot_product_attention': sdpa_flop_jit,
    'aten::_native_multi_head_attention': native_mha_flop_jit,
    'aten::baddbmm': baddbmm_flop_jit,
}
#: Handlers for in-place forms of products mmengine counts out of place: the SegFormer head accumulates
#: its fusion convolution block by block with ``addmm_``.
IN_PLACE_FLOP_HANDLES: Dict[str, Callable[[List[Any], List[Any]], int]] = {'aten::addmm_': addmm_flop_jit}

#: What :func:`count_flops` counts, for the tables.
FLOP_CONVENTION = ('multiply-adds counted once (mmengine FlopAnalyzer: convolutions, linear and matrix '
                   'products, norms, resizes) plus the attention products (scaled_dot_product_attention, '
                   'native multi-head attention, baddbmm); softmax, activations and additions not counted')


@dataclass
class FlopCount:
    """One network forward's FLOPs: the total, per operator, and the operators that were not counted."""
    total: int
    by_operator: Dict[str, int]
    not_counted: Dict[str, int]

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def count_flops(model: nn.Module, inputs: Tensor) -> FlopCount:
    """FLOPs of ``model(inputs)`` (a segmentor: its ``_forward``), traced without gradients."""
    from mmengine.analysis import FlopAnalyzer
    analyzer = FlopAnalyzer(model, (inputs, )).set_op_handle(**ATTENTION_FLOP_HANDLES, **IN_PLACE_FLOP_HANDLES)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
    with torch.no_grad():
        total = analyzer.total()
    return FlopCount(total=int(total), by_operator={k: int(v) for k, v in analyzer.by_operator().items()},
                     not_counted=dict(Counter(analyzer.unsupported_ops())))
