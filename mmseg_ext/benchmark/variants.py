"""Variants: the paths of one network timed side by side with the same weights.

A variant name is a '+'-joined list of steps (:data:`VARIANT_STEPS`), e.g. 'folded+channels-last': the
first step may be a base ('mmseg' or 'configured', the default) that builds a path from scratch, the
others transform the path built so far (:func:`parse_variant`, :func:`build_variant`). Runtimes register
further steps with :func:`register_variant_step` (:mod:`.runtimes`: ONNX Runtime and OpenVINO).
"""
import contextlib
import copy
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from mmseg_ext.builder import build_segmentor

from .config import to_mmseg_config

__all__ = ['Subject', 'VariantContext', 'VariantStep', 'VARIANT_STEPS', 'VARIANT_BASES', 'register_variant_step',
           'parse_variant', 'build_variant']


@dataclass
class Subject:
    """One timed path.

    Attributes:
        module: The segmentor behind the path (its weights, train mode, optimizer); None for a path
            that is not an ``nn.Module`` (an exported runtime), which can only run inference.
        forward: ``images -> logits`` at the network's output resolution (the segmentor's ``_forward``);
            for a runtime (no module), its whole test-mode inference, logits at the input size.
        memory_format: Layout the images are handed over in.
        trainable: Whether a training step of this path means anything (a folded model has no BN to train).
        autocast: Context manager entered around every call (mixed precision), or None.
        row_fields: Facts about the path its result row reports (e.g. an int8 file's calibration data).
    """
    module: Optional[nn.Module]
    forward: Callable[[Tensor], Any]
    memory_format: torch.memory_format = torch.contiguous_format
    trainable: bool = True
    autocast: Optional[Callable[[], contextlib.AbstractContextManager]] = None
    row_fields: Dict[str, Any] = field(default_factory=dict)


@dataclass
class VariantContext:
    """What the variant steps build from: the plugin's configured segmentor (weights loaded, eval mode,
    test mode set), its model config (for mmseg's counterpart), the device, and for exported runtimes the
    whole config and the input size (a static graph is exported for it)."""
    plugin: nn.Module
    model_cfg: dict
    device: torch.device
    cfg: Any = None
    input_shape: Optional[Tuple[int, int]] = None
    _mmseg: Optional[nn.Module] = None

    def mmseg_counterpart(self) -> nn.Module:
        """mmseg's implementation of the same network holding the plugin's weights (built once).

        Raises:
            ValueError: if a plugin type has no mmseg counterpart (see :func:`to_mmseg_config`).
        """
        if self._mmseg is None:
            model = build_segmentor(to_mmseg_config(self.model_cfg))
            model.load_state_dict(self.plugin.state_dict(), strict=True)
            self._mmseg = model.eval().to(self.device)
        return self._mmseg


def _forward_of(module: nn.Module) -> Callable[[Tensor], Any]:
    return lambda images: module._forward(images)


def _mmseg_step(subject: Optional[Subject], context: VariantContext) -> Subject:
    model = copy.deepcopy(context.mmseg_counterpart())
    return Subject(model, _forward_of(model))


def _configured_step(subject: Optional[Subject], context: VariantContext) -> Subject:
    model = copy.deepcopy(context.plugin).to(context.device)
    return Subject(model, _forward_of(model))


def _module_of(subject: Subject, step: str) -> nn.Module:
    if subject.module is None:
        raise ValueError(f'variant step {step!r} needs a PyTorch module, and the path before it has none')
    return subject.module


def _folded_step(subject: Subject, context: VariantContext) -> Subject:
    from mmseg_ext.folding import fuse_conv_bn
    module = fuse_conv_bn(_module_of(subject, 'folded').eval())
    return Subject(module, _forward_of(module), subject.memory_format, trainable=False, autocast=subject.autocast)


def _channels_last_step(subject: Subject, context: VariantContext) -> Subject:
    from mmseg_ext.precision import to_channels_last
    module = to_channels_last(_module_of(subject, 'channels-last'))
    return Subject(module, _forward_of(module), torch.channels_last, subject.trainable, subject.autocast)


def _compiled_step(subject: Subject, context: VariantContext) -> Subject:
    """``torch.compile`` of the network's parts (backbone, neck, heads); the losses, the resize of
    ``inference`` and the optimizer stay eager."""
    module = _module_of(subject, 'compiled')
    for name in ('backbone', 'neck', 'decode_head', 'auxiliary_head'):
        part = getattr(module, name, None)
        for piece in (part if isinstance(part, nn.ModuleList) else [part]):
            if isinstance(piece, nn.Module):
                piece.compile()
    return Subject(module, _forward_of(module), subject.memory_format, subject.trainable, subject.autocast)


def _amp_step(subject: Subject, context: VariantContext) -> Subject:
    dtype = torch.float16 if context.device.type == 'cuda' else torch.bfloat16
    return Subject(subject.module, subject.forward, subject.memory_format, subject.trainable,
                   autocast=lambda: torch.autocast(context.device.type, dtype=dtype))


def _bf16_step(subject: Subject, context: VariantContext) -> Subject:
    """The bf16 inference path: weights stored in bf16 (:func:`mmseg_ext.precision.cast_weights_to_bf16`),
    bf16 channels-last input, bf16 autocast; refused on a device without native bf16. Inference only (``amp``
    trains)."""
    from mmseg_ext.precision import bf16_autocast, cast_weights_to_bf16, check_precision, to_bf16_input
    check_precision('bf16', context.device.type)
    module = cast_weights_to_bf16(_module_of(subject, 'bf16'))
    return Subject(module, lambda images: module._forward(to_bf16_input(images)), torch.channels_last,
                   trainable=False, autocast=lambda: bf16_autocast(context.device.type))


VariantStep = Callable[[Optional[Subject], VariantContext], Subject]

#: Steps a variant name is made of. Bases ignore the subject they are given and build a fresh one.
VARIANT_STEPS: Dict[str, VariantStep] = {
    'mmseg': _mmseg_step,
    'configured': _configured_step,
    'folded': _folded_step,
    'channels-last': _channels_last_step,
    'compiled': _compiled_step,
    'amp': _amp_step,
    'bf16': _bf16_step,
}
VARIANT_BASES = {'mmseg', 'configured'}


def register_variant_step(name: str, step: VariantStep, base: bool = False) -> None:
    """Add a step to :data:`VARIANT_STEPS` (``base``: it builds a path from scratch, like 'mmseg')."""
    if not re.fullmatch(r'[a-z][a-z0-9-]*', name):
        raise ValueError(f'variant step names are lower-case words joined by "-", got {name!r}')
    VARIANT_STEPS[name] = step
    if base:
        VARIANT_BASES.add(name)


def parse_variant(name: str) -> List[str]:
    """The steps of a variant name, with the 'configured' base made explicit.

    Raises:
        ValueError: naming an unknown step or a base that is not first.
    """
    steps = name.split('+')
    unknown = [step for step in steps if step not in VARIANT_STEPS]
    if unknown:
        raise ValueError(f'variant {name!r}: unknown step(s) {unknown}; steps are '
                         f'{", ".join(sorted(VARIANT_STEPS))}, joined by "+"')
    misplaced = [step for step in steps[1:] if step in VARIANT_BASES]
    if misplaced:
        raise ValueError(f'variant {name!r}: {misplaced[0]!r} builds a model from scratch, so it can only come first')
    return steps if steps[0] in VARIANT_BASES else ['configured'] + steps


def build_variant(name: str, context: VariantContext) -> Subject:
    """The subject a variant name describes (see :data:`VARIANT_STEPS`)."""
    subject = None
    for step in parse_variant(name):
        subject = VARIANT_STEPS[step](subject, context)
    return subject
