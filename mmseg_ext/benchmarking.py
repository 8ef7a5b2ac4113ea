"""Side-by-side measurement of segmentors, the one home of ``tools/benchmark.py``'s machinery.

One config resolver (:func:`to_mmseg_config`; models are built by the tools' one builder,
:func:`mmseg_ext.launch.build_segmentor`), one weight randomiser (:func:`randomize_batch_norms`), one FLOP
counter (:func:`count_flops`), one table of variants (the paths timed side by side: :data:`VARIANT_STEPS`,
:func:`build_variant`), the two timed tasks (:func:`inference_runner`, :func:`train_step_runner`), one timer
(:func:`time_alternating`), one peak-memory probe (:func:`peak_memory_mb`) and the allocator conditions
(:data:`ALLOCATORS`).

Speed claims in this project are ratios measured in one process with the same weights, the variants
called in turn so that a busy shared machine slows them alike.
"""
import contextlib
import copy
import ctypes
import gc
import inspect
import logging
import math
import os
import re
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.analysis.jit_handles import addmm_flop_jit
from torch import Tensor

from mmseg_ext.launch import build_segmentor

__all__ = [
    'to_mmseg_config', 'build_segmentor', 'randomize_batch_norms', 'count_flops', 'FlopCount',
    'ATTENTION_FLOP_HANDLES', 'IN_PLACE_FLOP_HANDLES', 'Subject', 'VariantContext', 'VARIANT_STEPS',
    'register_variant_step',
    'build_variant', 'inference_runner', 'train_step_runner', 'time_alternating', 'peak_memory_mb', 'Timing',
    'ALLOCATORS', 'allocator_environment'
]

PLUGIN_PREFIX = 'mmseg_ext.'

# ----------------------------------------------------------------------------------------------------------
# Config resolution: the plugin's config and mmseg's counterpart of it.


def _accepted_arguments(cls: type) -> Optional[set]:
    """Names ``cls(...)`` accepts, following ``**kwargs`` up the class hierarchy; None if unbounded."""
    names = set()
    for klass in cls.__mro__:
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(vars(klass)['__init__']).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {'self'}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def _plugin_defaults(cls: type) -> Dict[str, Any]:
    defaults = {}
    for klass in reversed(cls.__mro__):
        if '__init__' in vars(klass):
            for p in inspect.signature(vars(klass)['__init__']).parameters.values():
                if p.default is not p.empty:
                    defaults[p.name] = p.default
    return defaults


def _resolve_mit_arch(cfg: dict) -> None:
    from mmseg_ext.models.backbones.mit import MIT_ARCH_SETTINGS
    arch = cfg.pop('arch', None)
    if arch is not None:
        for key, value in MIT_ARCH_SETTINGS[arch].items():
            cfg.setdefault(key, value)


# Plugin arguments that map onto mmseg's explicit ones before the generic translation.
_SPECIAL_CASES: Dict[str, Callable[[dict], None]] = {'MixVisionTransformer': _resolve_mit_arch}


def to_mmseg_config(cfg: Any) -> Any:
    """The same model config with every ``mmseg_ext.X`` replaced by mmseg's ``X``.

    Plugin-only arguments are dropped when they hold the plugin's default (mmseg then behaves the same);
    ``arch`` of MiT becomes mmseg's explicit settings.

    Raises:
        ValueError: if a plugin type has no mmseg class of the same name, or sets a plugin-only
            argument to a non-default value (that model has no mmseg counterpart to compare with).
    """
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(to_mmseg_config(item) for item in cfg)
    if not isinstance(cfg, dict):
        return cfg
    result = {key: to_mmseg_config(value) for key, value in cfg.items()}
    type_name = result.get('type')
    if not (isinstance(type_name, str) and type_name.startswith(PLUGIN_PREFIX)):
        return result
    from mmseg.registry import MODELS as MMSEG_MODELS

    from mmseg_ext.registry import MODELS as PLUGIN_MODELS
    name = type_name[len(PLUGIN_PREFIX):]
    mmseg_cls = MMSEG_MODELS.module_dict.get(name)
    if mmseg_cls is None:
        MMSEG_MODELS.import_from_location()
        mmseg_cls = MMSEG_MODELS.module_dict.get(name)
    if mmseg_cls is None:
        raise ValueError(f'{type_name} has no mmseg counterpart (mmseg has no model named {name!r})')
    plugin_cls = PLUGIN_MODELS.get(name)
    _SPECIAL_CASES.get(name, lambda c: None)(result)
    accepted = _accepted_arguments(mmseg_cls)
    defaults = _plugin_defaults(plugin_cls)
    for key in list(result):
        if key == 'type' or accepted is None or key in accepted:
            continue
        if key in defaults and result[key] == defaults[key]:
            del result[key]
        else:
            raise ValueError(f'{type_name} sets {key}={result[key]!r}, which mmseg\'s {name} does not have, '
                             'so there is no mmseg counterpart to compare with')
    result['type'] = name
    return result


# ----------------------------------------------------------------------------------------------------------
# Weights.


def randomize_batch_norms(model: nn.Module, seed: int = 0, mean_std: float = 0.1,
                          var_range: Tuple[float, float] = (0.5, 1.5), bias_std: float = 0.1,
                          batches_tracked: Optional[int] = None) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters (random weights
    otherwise leave BN at identity, which would hide folding and layout errors); returns ``model``.

    Running means N(0, mean_std^2), variances U(var_range), scales U(0.5, 1.5), shifts N(0, bias_std^2),
    drawn in that order per norm from one generator seeded with ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    low, high = var_range
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.randn(shape, generator=generator) * mean_std)
                module.running_var.copy_(torch.rand(shape, generator=generator) * (high - low) + low)
                if module.weight is not None:
                    module.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(shape, generator=generator) * bias_std)
                if batches_tracked is not None:
                    module.num_batches_tracked.fill_(batches_tracked)
    return model


# ----------------------------------------------------------------------------------------------------------
# FLOPs by the papers' convention: one multiply-add is one FLOP, attention products included.


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


# ----------------------------------------------------------------------------------------------------------
# Variants: the paths timed side by side. A variant name is a '+'-joined list of steps, e.g.
# 'folded+channels-last': the first step may be a base ('mmseg' or 'configured', the default), the
# others transform the subject built so far. Further runtimes register a step with
# :func:`register_variant_step`.


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


# ----------------------------------------------------------------------------------------------------------
# The timed tasks.


def _call(subject: Subject, function: Callable[[], Any]) -> Any:
    with subject.autocast() if subject.autocast else contextlib.nullcontext():
        return function()


def _image_metas(images: Tensor) -> List[dict]:
    height, width = images.shape[-2:]
    return [dict(ori_shape=(height, width), img_shape=(height, width), pad_shape=(height, width),
                 padding_size=[0, 0, 0, 0])] * images.shape[0]


def inference_runner(subject: Subject, images: Tensor, whole_network_only: bool = True) -> Callable[[], Any]:
    """One inference call of ``subject`` under ``torch.inference_mode``.

    ``whole_network_only``: the network's forward (``_forward``: backbone and heads, logits at the
    network's resolution). Otherwise the segmentor's ``inference`` (its test mode, whole or sliding
    window, and the resize of the logits to the input), which needs a module.
    """
    images = images.contiguous(memory_format=subject.memory_format)
    if whole_network_only or subject.module is None:  # a runtime's forward is its whole inference
        function = lambda: subject.forward(images)  # noqa: E731
    else:
        module = subject.module
        metas = _image_metas(images)
        function = lambda: module.inference(images, metas)  # noqa: E731

    def run() -> Any:
        with torch.inference_mode():
            return _call(subject, function)

    return run


def train_step_runner(subject: Subject, images: Tensor, labels: Tensor, optim_wrapper_cfg: dict) -> Callable[[], Any]:
    """One training step of ``subject``: the segmentor's losses on ``images`` against ``labels``, backward
    and the optimizer step of ``optim_wrapper_cfg`` (built with mmengine, as the runner does).

    Raises:
        ValueError: for a path that cannot be trained (folded, or not a module).
    """
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    if subject.module is None or not subject.trainable:
        raise ValueError('this variant cannot be trained (a folded model has no batch norms to train, an '
                         'exported runtime no autograd)')
    module = subject.module.train()
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # not a line per parameter group
    try:
        optim_wrapper = build_optim_wrapper(module, copy.deepcopy(optim_wrapper_cfg))
    finally:
        logger.setLevel(level)
    images = images.contiguous(memory_format=subject.memory_format)
    samples = []
    for meta, label in zip(_image_metas(images), labels):
        sample = SegDataSample(metainfo=meta)
        sample.gt_sem_seg = PixelData(data=label[None])
        samples.append(sample)

    def run() -> Tensor:
        with optim_wrapper.optim_context(module):
            losses = _call(subject, lambda: module.loss(images, samples))
        loss, _ = module.parse_losses(losses)
        optim_wrapper.update_params(loss)
        return loss.detach()

    return run


# ----------------------------------------------------------------------------------------------------------
# Timing and memory.


@dataclass
class Timing:
    """Seconds per call of one variant: wall time, and the CPU time of the whole process (all threads)
    split into user and system (kernel) time, which ``os.times`` gives; system time is mostly paging
    in freshly allocated memory."""
    seconds: List[float]
    user_seconds: List[float] = field(default_factory=list)
    system_seconds: List[float] = field(default_factory=list)
    warmup_seconds: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p90(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]

    def as_dict(self) -> dict:
        return dict(asdict(self), median=self.median, p90=self.p90)


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_alternating(runs: Dict[str, Callable[[], object]], repeats: int, warmup: int,
                     on_step: Optional[Callable[[], None]] = None) -> Dict[str, Timing]:
    """Time each callable ``repeats`` times after ``warmup`` calls, calling the variants in turn and
    rotating their order every round. Warm-up calls are timed too (``warmup_seconds``: the first one
    includes one-time costs such as compilation)."""
    names = list(runs)
    timings = {name: Timing([]) for name in names}
    for _ in range(warmup):
        for name in names:
            start = time.perf_counter()
            runs[name]()
            _synchronize()
            timings[name].warmup_seconds.append(time.perf_counter() - start)
            on_step and on_step()
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            _synchronize()
            start, start_cpu = time.perf_counter(), os.times()
            runs[name]()
            _synchronize()
            end, end_cpu = time.perf_counter(), os.times()
            timings[name].seconds.append(end - start)
            timings[name].user_seconds.append(end_cpu.user - start_cpu.user)
            timings[name].system_seconds.append(end_cpu.system - start_cpu.system)
            on_step and on_step()
    return timings


def _status_kib(field_name: str) -> int:
    with open('/proc/self/status') as file:
        return int(re.search(rf'^{field_name}:\s+(\d+) kB', file.read(), flags=re.M).group(1))


def _release_free_heap() -> None:
    """Return memory freed by earlier calls to the OS (glibc keeps it resident otherwise), so it is not
    silently reused by the measured call."""
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except OSError:  # not glibc: the measurement may undercount reused memory
        pass


def peak_memory_mb(run: Callable[[], object], device: torch.device) -> float:
    """Peak memory one call of ``run`` adds, in MiB.

    On CUDA: the peak of ``torch.cuda.max_memory_allocated`` above what was allocated before. On CPU:
    the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident
    size before the call, after handing freed heap memory back to the OS (``malloc_trim``).
    """
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    gc.collect()
    _release_free_heap()
    with open('/proc/self/clear_refs', 'w') as file:
        file.write('5')  # reset VmHWM to the current resident size
    before = _status_kib('VmRSS')
    run()
    return (_status_kib('VmHWM') - before) / 1024


# ----------------------------------------------------------------------------------------------------------
# Allocator conditions. glibc reads its MALLOC_* tunables once, at start-up, so a condition applies to a
# fresh process (tools/benchmark.py runs one per condition).

_GLIBC_TUNABLES = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_', 'MALLOC_ARENA_MAX')

#: name -> environment of the process. 'default': glibc as it starts (its mmap threshold adapts up to
#: 32 MiB; larger blocks are fresh mmaps, paged in on every use). 'tuned': glibc keeps freed memory
#: (no mmap below 4 GiB, no trimming, 1 GiB top pad), so neither implementation pays page faults for
#: memory it allocated before.
ALLOCATORS: Dict[str, Dict[str, str]] = {
    'default': {},
    'tuned': dict(MALLOC_MMAP_THRESHOLD_=str(4 * 2**30), MALLOC_TRIM_THRESHOLD_=str(64 * 2**30),
                  MALLOC_TOP_PAD_=str(2**30)),
}


def allocator_environment(name: str, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """``base`` (default ``os.environ``) without glibc's malloc tunables, plus those of allocator ``name``.

    Raises:
        ValueError: for an unknown allocator name.
    """
    if name not in ALLOCATORS:
        raise ValueError(f'allocator {name!r} is not one of {", ".join(ALLOCATORS)}')
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _GLIBC_TUNABLES}
    env.update(ALLOCATORS[name])
    return env


def current_allocator(env: Optional[Dict[str, str]] = None) -> Optional[str]:
    """The name of the allocator condition this process runs under, or None for other settings."""
    env = os.environ if env is None else env
    present = {k: env[k] for k in _GLIBC_TUNABLES if k in env}
    return next((name for name, settings in ALLOCATORS.items() if settings == present), None)


def ratio_summary(timings: Dict[str, Timing], baseline: str) -> Dict[str, float]:
    """Speed-up of every variant over ``baseline`` (baseline median / variant median)."""
    base = timings[baseline].median
    return {name: base / timing.median for name, timing in timings.items()}


def max_difference(outputs: Dict[str, Any], baseline: str) -> Dict[str, float]:
    """Largest absolute difference of every variant's output (tensor or list of tensors) from ``baseline``'s.

    Logits of another size (a runtime returns them at the input size, ``_forward`` at the network's) are
    compared after resizing the baseline's as mmseg's ``postprocess_result`` does (bilinear, corners not
    aligned, the plugin's configs' setting)."""

    def flat(output: Any) -> Sequence[Tensor]:
        return [output] if isinstance(output, Tensor) else list(output)

    def difference(a: Tensor, b: Tensor) -> float:
        a, b = a.float(), b.float()
        if a.dim() == 4 and a.shape[-2:] != b.shape[-2:]:
            b = torch.nn.functional.interpolate(b, size=a.shape[-2:], mode='bilinear', align_corners=False)
        return float((a - b).abs().max())

    reference = flat(outputs[baseline])
    return {name: max(difference(a, b) for a, b in zip(flat(output), reference)) for name, output in outputs.items()}
