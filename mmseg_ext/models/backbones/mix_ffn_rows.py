"""Mix-FFN computed over blocks of rows, so that no hidden tensor reaches glibc's mmap threshold.

MiT's Mix-FFN widens the tokens four times; at 1024x1024 the hidden maps of the first stage are 64 MiB
and those of the second 32 MiB. glibc serves every allocation of 32 MiB or more with a fresh ``mmap``
whose pages fault in (and are zeroed by the kernel) on first touch, and unmaps it on free, so each such
tensor pays that cost again in every step. Measured on this project's 2-core machine, GELU on a 64 MiB
tensor takes 0.46 ms per MiB and on a 16-31 MiB one 0.11-0.13 ms per MiB; smaller blocks come from
glibc's heap, which reuses freed memory (it still hands back a free top of the heap beyond its trim
threshold, so the saved activations are paged in again each step either way).

The arithmetic is unchanged: both 1x1 convolutions and the activation act per pixel, and the 3x3
depth-wise convolution of a block of rows reads one halo row above and below, which each block
recomputes from the neighbouring input rows (a few percent more work in the first 1x1 convolution).
The backward is written out (:class:`RowBlockedMixFFN`) so that the gradients of the hidden maps stay
block-sized as well; the weight gradients are summed over the blocks.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['GLIBC_MMAP_THRESHOLD_MAX', 'plan_row_blocks', 'row_blocked_mix_ffn', 'supports_row_blocking']

#: glibc's largest dynamic mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``): an
#: allocation this large or larger is always a fresh mapping.
GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20
#: Size budget of one block of a hidden map: half the threshold, leaving room for the halo rows.
HIDDEN_BLOCK_BYTES = 16 * 2**20

RowBlock = Tuple[int, int]


def plan_row_blocks(height: int, bytes_per_row: int, threshold_bytes: int = GLIBC_MMAP_THRESHOLD_MAX,
                    block_bytes: int = HIDDEN_BLOCK_BYTES) -> Optional[List[RowBlock]]:
    """Row ranges ``[start, stop)`` of about equal height covering ``height`` rows, each block at most
    ``block_bytes`` (at least one row), or None when the whole map is below ``threshold_bytes``.

    Args:
        height: Rows of the hidden map.
        bytes_per_row: Bytes of one row of it over the whole batch and all channels.
        threshold_bytes: Maps of this size or more are cut.
        block_bytes: Budget of one block.
    """
    if height < 2 or height * bytes_per_row < threshold_bytes:
        return None
    rows_per_block = max(1, block_bytes // bytes_per_row)
    num_blocks = math.ceil(height / rows_per_block)
    rows_per_block = math.ceil(height / num_blocks)  # balance the blocks
    return [(start, min(start + rows_per_block, height)) for start in range(0, height, rows_per_block)]


#: The activations whose backward :class:`RowBlockedMixFFN` writes out, by the name it uses.
_ACTIVATION_KINDS = {nn.GELU: 'gelu', nn.ReLU: 'relu'}


def supports_row_blocking(activate: nn.Module) -> bool:
    """Whether :func:`row_blocked_mix_ffn` has a backward for this activation (GELU or ReLU)."""
    return type(activate) in _ACTIVATION_KINDS


def _activation_spec(activate: nn.Module) -> Tuple[str, str]:
    """``(kind, approximate)`` of a supported activation (``approximate`` is GELU's mode)."""
    if not supports_row_blocking(activate):
        raise TypeError(f'row-blocked Mix-FFN supports GELU and ReLU, got {type(activate).__name__}')
    return _ACTIVATION_KINDS[type(activate)], getattr(activate, 'approximate', 'none')


def _activate(hidden: Tensor, kind: str, approximate: str) -> Tensor:
    return F.gelu(hidden, approximate=approximate) if kind == 'gelu' else F.relu(hidden)


def _slab(block: RowBlock, height: int) -> RowBlock:
    """The input rows a block needs: its own and one halo row on each side inside the map."""
    return max(block[0] - 1, 0), min(block[1] + 1, height)


def _conv_backward(grad_out: Tensor, inputs: Tensor, weight: Tensor, padding: int, groups: int,
                   output_mask: List[bool]) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of a stride-1 convolution for its input, weight and bias, as ``output_mask`` asks."""
    return torch.ops.aten.convolution_backward(
        grad_out, inputs, weight, [weight.shape[0]] if output_mask[2] else None, stride=[1, 1],
        padding=[padding, padding], dilation=[1, 1], transposed=False, output_padding=[0, 0], groups=groups,
        output_mask=output_mask)


def _forward_blocks(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], dw_weight: Tensor,
                    dw_bias: Optional[Tensor], fc2_weight: Tensor, fc2_bias: Optional[Tensor], kind: str,
                    approximate: str, blocks: Sequence[RowBlock], keep: bool) -> Tuple[Tensor, List[Tensor]]:
    """The output and, if ``keep``, each block's hidden, depth-wise and activated maps."""
    height = x.shape[2]
    hidden_channels = fc1_weight.shape[0]
    outputs, saved = [], []
    for block in blocks:
        slab = _slab(block, height)
        hidden = F.conv2d(x[:, :, slab[0]:slab[1]], fc1_weight, fc1_bias)
        mixed = F.conv2d(hidden, dw_weight, dw_bias, padding=1, groups=hidden_channels)
        activated = _activate(mixed[:, :, block[0] - slab[0]:block[1] - slab[0]], kind, approximate)
        outputs.append(F.conv2d(activated, fc2_weight, fc2_bias))
        if keep:
            saved += [hidden, mixed, activated]
    return torch.cat(outputs, dim=2), saved


class RowBlockedMixFFN(torch.autograd.Function):
    """``fc2(act(dw_conv(fc1(x))))`` block of rows by block, with a backward that keeps block sizes.

    Inputs are the channels-last map ``x`` ``[B, C, H, W]``, the weights and biases of the 1x1
    convolution ``fc1``, the depth-wise 3x3 convolution (padding 1) and the 1x1 convolution ``fc2``, the
    activation (``'gelu'`` with its ``approximate`` mode, or ``'relu'``) and the row blocks.
    """

    @staticmethod
    def forward(ctx, x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], dw_weight: Tensor,
                dw_bias: Optional[Tensor], fc2_weight: Tensor, fc2_bias: Optional[Tensor], kind: str,
                approximate: str, blocks: Sequence[RowBlock]) -> Tensor:
        out, saved = _forward_blocks(x, fc1_weight, fc1_bias, dw_weight, dw_bias, fc2_weight, fc2_bias, kind,
                                     approximate, blocks, keep=True)
        ctx.save_for_backward(x, fc1_weight, dw_weight, fc2_weight, *saved)
        ctx.blocks, ctx.kind, ctx.approximate = list(blocks), kind, approximate
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, fc1_weight, dw_weight, fc2_weight, *saved = ctx.saved_tensors
        height = x.shape[2]
        hidden_channels = fc1_weight.shape[0]
        needs_x, needs_fc1_w, needs_fc1_b, needs_dw_w, needs_dw_b, needs_fc2_w, needs_fc2_b = ctx.needs_input_grad[:7]
        grad_x = torch.zeros_like(x, memory_format=torch.channels_last) if needs_x else None
        sums: List[Optional[Tensor]] = [None] * 6  # fc1 w/b, depth-wise w/b, fc2 w/b

        def accumulate(index: int, value: Optional[Tensor]) -> None:
            if value is not None:
                sums[index] = value if sums[index] is None else sums[index].add_(value)

        for block_index, block in enumerate(ctx.blocks):
            hidden, mixed, activated = saved[3 * block_index:3 * block_index + 3]
            slab = _slab(block, height)
            inner = slice(block[0] - slab[0], block[1] - slab[0])
            grad_activated, grad_w, grad_b = _conv_backward(grad_out[:, :, block[0]:block[1]], activated, fc2_weight,
                                                            0, 1, [True, needs_fc2_w, needs_fc2_b])
            accumulate(4, grad_w), accumulate(5, grad_b)
            # The halo rows of the depth-wise output belong to the neighbouring blocks: zero gradient here.
            grad_mixed = torch.empty_like(mixed)
            grad_mixed[:, :, :inner.start].zero_()
            grad_mixed[:, :, inner.stop:].zero_()
            if ctx.kind == 'gelu':
                torch.ops.aten.gelu_backward.grad_input(grad_activated, mixed[:, :, inner],
                                                        approximate=ctx.approximate,
                                                        grad_input=grad_mixed[:, :, inner])
            else:
                torch.ops.aten.threshold_backward.grad_input(grad_activated, activated, 0,
                                                             grad_input=grad_mixed[:, :, inner])
            del grad_activated
            grad_hidden, grad_w, grad_b = _conv_backward(grad_mixed, hidden, dw_weight, 1, hidden_channels,
                                                         [True, needs_dw_w, needs_dw_b])
            accumulate(2, grad_w), accumulate(3, grad_b)
            del grad_mixed
            grad_slab, grad_w, grad_b = _conv_backward(grad_hidden, x[:, :, slab[0]:slab[1]], fc1_weight, 0, 1,
                                                       [needs_x, needs_fc1_w, needs_fc1_b])
            accumulate(0, grad_w), accumulate(1, grad_b)
            if needs_x:
                grad_x[:, :, slab[0]:slab[1]] += grad_slab
        fc1_w, fc1_b, dw_w, dw_b, fc2_w, fc2_b = sums
        return grad_x, fc1_w, fc1_b, dw_w, dw_b, fc2_w, fc2_b, None, None, None


def row_blocked_mix_ffn(x: Tensor, fc1: nn.Conv2d, dw_conv: nn.Conv2d, activate: nn.Module, fc2: nn.Conv2d,
                        blocks: Sequence[RowBlock]) -> Tensor:
    """Mix-FFN (without dropout) of the ``[B, C, H, W]`` map ``x`` over the row ``blocks``.

    Returns the ``[B, C_out, H, W]`` channels-last output; with gradients enabled the hidden maps of
    the backward are block-sized too.
    """
    kind, approximate = _activation_spec(activate)
    tensors = (x, fc1.weight, fc1.bias, dw_conv.weight, dw_conv.bias, fc2.weight, fc2.bias)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        return _forward_blocks(*tensors, kind, approximate, blocks, keep=False)[0]
    return RowBlockedMixFFN.apply(*tensors, kind, approximate, blocks)
