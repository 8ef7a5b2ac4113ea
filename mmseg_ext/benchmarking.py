"""Side-by-side measurement of segmentors: mmseg counterparts, alternating timing, peak memory.

Used by ``tools/benchmark.py``. Speed claims in this project are ratios measured in one process with
the same weights, the variants called in turn so that a busy shared machine slows them alike.
"""
import ctypes
import gc
import inspect
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

__all__ = ['to_mmseg_config', 'time_alternating', 'peak_memory_mb', 'randomize_batch_norms', 'Timing']

PLUGIN_PREFIX = 'mmseg_ext.'


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


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every batch norm non-trivial running statistics and affine parameters (random weights
    otherwise leave BN at identity, which would hide folding and layout errors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                if module.weight is not None:
                    module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)


@dataclass
class Timing:
    """Seconds per call of one variant: wall time, and the CPU time of the whole process (all threads)
    split into user and system (kernel) time, which ``os.times`` gives; system time is mostly paging
    in freshly allocated memory."""
    seconds: List[float]
    user_seconds: List[float] = field(default_factory=list)
    system_seconds: List[float] = field(default_factory=list)

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
    rotating their order every round."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
            on_step and on_step()
    timings = {name: Timing([]) for name in names}
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


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as file:
        return int(re.search(rf'^{field}:\s+(\d+) kB', file.read(), flags=re.M).group(1))


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
