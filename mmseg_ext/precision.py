"""Numeric precision of inference and training: the bf16 path and the checks that guard it.

One home for what ``--precision`` (``tools/test.py``, ``tools/deployment/infer.py``), ``--amp``
(``tools/train.py``) and the benchmark's ``bf16`` variant need:

* :func:`check_precision` refuses, in one line, a precision the device cannot run fast: bf16 on a CPU
  without AVX512_BF16 (or AMX-BF16) would run in emulation, slower than float32.
* :func:`bf16_autocast` is ``torch.autocast`` in bfloat16 for a device: convolutions and matrix products
  (attention's included) run in bf16 with float32 accumulation, while the ops autocast keeps in float32
  (losses, norms' statistics, softmax outside fused attention, reductions) stay float32.
* :func:`cast_weights_to_bf16` stores convolution and linear weights in bf16 once, so a call does not cast
  them again; norms keep float32 parameters (their statistics need them).
* :func:`enable_bf16_inference` turns a segmentor into its bf16 test path: batch norms folded, channels-last,
  bf16 weights and input, the network under autocast and its logits handed back in float32, so mmseg's resize,
  slide-window averaging and argmax run as they do in float32.
"""
import contextlib
import functools
import os
from typing import Callable, Optional, Tuple

import torch
from torch import nn

__all__ = ['PRECISIONS', 'PrecisionError', 'missing_bf16_instructions', 'check_precision', 'bf16_autocast',
           'cast_weights_to_bf16', 'to_channels_last', 'to_bf16_input', 'enable_bf16_inference']

#: Precisions the tools accept for PyTorch models.
PRECISIONS: Tuple[str, ...] = ('float32', 'bf16')

# Either of these lets oneDNN run bf16 convolutions and matrix products natively on x86.
_BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')


class PrecisionError(ValueError):
    """A precision the model file, the tool or the machine cannot run."""


def _cpu_flags() -> Optional[set]:
    """The CPU feature flags the kernel reports, or None where there is no ``/proc/cpuinfo``."""
    if not os.path.exists('/proc/cpuinfo'):
        return None
    with open('/proc/cpuinfo') as cpuinfo:
        for line in cpuinfo:
            if line.startswith('flags'):
                return set(line.split(':', 1)[1].split())
    return set()


def missing_bf16_instructions(device: str = 'cpu') -> Optional[str]:
    """None if ``device`` runs bf16 natively, else the name of what it lacks (for the refusal)."""
    device_type = torch.device(device).type
    if device_type == 'cuda':
        return None if torch.cuda.is_bf16_supported() else 'bf16 support on this CUDA device (compute capability 8.0+)'
    if device_type != 'cpu':
        return f'bf16 support on device type {device_type!r}'
    flags = _cpu_flags()
    if flags is None:  # not Linux: ask oneDNN instead
        return None if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'AVX512_BF16 (or AMX-BF16)'
    return None if flags & set(_BF16_CPU_FLAGS) else 'AVX512_BF16 (or AMX-BF16)'


def check_precision(precision: str, device: str = 'cpu') -> None:
    """Raise :class:`PrecisionError` (one line) unless ``device`` can run ``precision`` natively."""
    if precision not in PRECISIONS:
        raise PrecisionError(f'precision {precision!r} is not supported; choose one of {", ".join(PRECISIONS)}')
    if precision == 'bf16':
        missing = missing_bf16_instructions(device)
        if missing:
            raise PrecisionError(f'bf16 needs {missing}, which this machine ({device}) lacks; use float32')


def bf16_autocast(device_type: str = 'cpu') -> contextlib.AbstractContextManager:
    """``torch.autocast`` in bfloat16 on ``device_type``."""
    return torch.autocast(device_type, dtype=torch.bfloat16)


def cast_weights_to_bf16(model: nn.Module) -> nn.Module:
    """Store the weights and biases of every convolution and linear layer in bf16, in place.

    Under autocast these layers cast their float32 weights to bf16 on every call; stored in bf16 they are
    used as they are. Norm layers keep float32 parameters. For inference only: an optimizer stepping bf16
    weights loses the small updates float32 master weights keep.
    """
    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            module.to(torch.bfloat16)
    return model


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` in channels-last memory format, in place; ERFNet backbones (whose ``channels_last=None``
    converts layouts at their ends) keep the features NHWC through the head as well."""
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if getattr(module, 'channels_last', False) is None:
            module.channels_last = True
    return model


def to_bf16_input(images: torch.Tensor) -> torch.Tensor:
    """Normalised images ``[N, 3, H, W]`` as the bf16 path takes them: bf16, channels-last. Cast once here, a
    float32 image would make the first layers that also see it directly (ERFNet's downsampler concatenates a
    convolution with a max-pool of its input) promote to float32 and cast back."""
    return images.to(dtype=torch.bfloat16, memory_format=torch.channels_last)


def _bf16_network(encode_decode: Callable, device_type: str) -> Callable:
    @functools.wraps(encode_decode)
    def run(inputs: torch.Tensor, batch_img_metas):
        with bf16_autocast(device_type):
            logits = encode_decode(to_bf16_input(inputs), batch_img_metas)
        return logits.float()

    return run


def enable_bf16_inference(segmentor: nn.Module, device_type: str = 'cpu') -> nn.Module:
    """Make ``segmentor`` (an mmseg ``EncoderDecoder`` or cascade, weights loaded) run its test path in bf16.

    In place and for inference only: batch norms are folded into the convolutions, the model is made
    channels-last and its convolution and linear weights bf16 (:func:`cast_weights_to_bf16`), and
    ``encode_decode`` (backbone, heads and the resize to the input, which ``whole`` and ``slide`` inference
    both call) runs under bf16 autocast and returns float32 logits. Whatever calls the segmentor
    (mmengine's test loop, which switches an outer autocast off, ``MMSegInferencer``) then runs bf16.

    Raises:
        PrecisionError: if the segmentor has no ``encode_decode`` (not an mmseg segmentor).
    """
    from mmseg_ext.folding import fuse_conv_bn
    if not callable(getattr(segmentor, 'encode_decode', None)):
        raise PrecisionError(f'bf16 inference needs an mmseg segmentor with encode_decode, got '
                             f'{type(segmentor).__name__}')
    fuse_conv_bn(segmentor.eval())
    cast_weights_to_bf16(to_channels_last(segmentor))
    segmentor.encode_decode = _bf16_network(segmentor.encode_decode, device_type)
    return segmentor
