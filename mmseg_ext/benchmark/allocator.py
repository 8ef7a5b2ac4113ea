"""Allocator conditions. glibc reads its MALLOC_* tunables once, at start-up, so a condition applies to a
fresh process (``tools/analysis_tools/benchmark.py`` runs one per condition)."""
import os
from typing import Dict, Optional

__all__ = ['ALLOCATORS', 'allocator_environment', 'current_allocator']

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
