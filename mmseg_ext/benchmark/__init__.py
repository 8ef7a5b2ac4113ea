"""Side-by-side measurement of segmentors, the machinery of ``tools/analysis_tools/benchmark.py``.

Speed claims in this project are ratios measured in one process with the same weights, the variants
called in turn so that a busy shared machine slows them alike. The modules:

* :mod:`.config`: mmseg's counterpart of a plugin config, random batch-norm statistics;
* :mod:`.flops`: FLOPs by the papers' convention, attention products included;
* :mod:`.variants`: the paths timed side by side (``mmseg``, ``configured``, ``folded``, ...);
* :mod:`.runtimes`: the exported paths (ONNX Runtime, OpenVINO), registered as variants on import here;
* :mod:`.tasks`: one inference call or training step of a variant;
* :mod:`.timing`: the alternating timer, the median, peak memory;
* :mod:`.allocator`: glibc allocator conditions, one per process;
* :mod:`.roofline`: the CPU's dense rate per precision and a row's share of it.

The dependency runs one way: this package uses :mod:`mmseg_ext.deploy`, never the reverse.
"""
from .allocator import ALLOCATORS, allocator_environment, current_allocator
from .config import randomize_batch_norms, to_mmseg_config
from .flops import ATTENTION_FLOP_HANDLES, FLOP_CONVENTION, IN_PLACE_FLOP_HANDLES, FlopCount, count_flops
from .runtimes import OnnxRuntimeVariant  # importing it registers the exported variants
from .tasks import image_metas, inference_runner, max_difference, train_step_runner
from .timing import Timing, median, peak_memory_mb, ratio_summary, time_alternating
from .variants import (VARIANT_BASES, VARIANT_STEPS, Subject, VariantContext, build_variant, parse_variant,
                       register_variant_step)

__all__ = [
    'ALLOCATORS', 'allocator_environment', 'current_allocator', 'randomize_batch_norms', 'to_mmseg_config',
    'ATTENTION_FLOP_HANDLES', 'FLOP_CONVENTION', 'IN_PLACE_FLOP_HANDLES', 'FlopCount', 'count_flops', 'image_metas',
    'inference_runner', 'max_difference', 'train_step_runner', 'Timing', 'median', 'peak_memory_mb',
    'ratio_summary', 'time_alternating', 'VARIANT_BASES', 'VARIANT_STEPS', 'Subject', 'VariantContext',
    'build_variant', 'parse_variant', 'register_variant_step', 'OnnxRuntimeVariant'
]
