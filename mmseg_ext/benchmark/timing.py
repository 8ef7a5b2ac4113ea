"""Timing and memory: variants called in turn (:func:`time_alternating`), their :class:`Timing`, the one
:func:`median` of the benchmark, and the peak memory one call adds (:func:`peak_memory_mb`)."""
import ctypes
import gc
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

__all__ = ['Timing', 'median', 'time_alternating', 'peak_memory_mb', 'ratio_summary']


def median(values: List[float]) -> float:
    """The median (the mean of the middle two of an even count); NaN for no values."""
    return statistics.median(values) if values else float('nan')


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
        return median(self.seconds)

    @property
    def p90(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


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


def ratio_summary(timings: Dict[str, Timing], baseline: str) -> Dict[str, float]:
    """Speed-up of every variant over ``baseline`` (baseline median / variant median)."""
    base = timings[baseline].median
    return {name: base / timing.median for name, timing in timings.items()}
