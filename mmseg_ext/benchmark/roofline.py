"""This CPU's dense rate per precision (the "roof") and a benchmark row's share of it.

The roof of a precision is the better of two dense kernels timed in the benchmark's own process with its
torch threads: a square matrix product and a 3x3 convolution (as many channels out as in, channels-last,
batch 1), each the best of a few calls. A segmentation network is mostly such layers plus memory-bound
work (norms, activations, resizes), so its rate over the roof says how much of the machine a path uses.
Rates are multiply-adds per second (GMAC/s), the unit ``mmseg_ext.benchmark.flops.count_flops`` counts in
(one multiply-add is one FLOP by the papers' convention), so a row's achieved rate is its GFLOPs over its
median seconds.

Kernels per precision (:data:`KERNELS`, which says why these): torch's oneDNN kernels throughout,
float32 and bfloat16 tensors, and for int8 oneDNN's quantized linear and convolution.

Self-contained on purpose (torch only): ``tools/analysis_tools/benchmark.py`` calls :func:`measure_roof` and
:func:`annotate_rows`.
"""
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['PRECISIONS', 'OPERATIONS', 'RoofShapes', 'KERNELS', 'measure_roof', 'variant_precision',
           'achieved_rate', 'annotate_rows', 'summary']

PRECISIONS = ('float32', 'bf16', 'int8')
OPERATIONS = ('matmul', 'conv')


@dataclass(frozen=True)
class RoofShapes:
    """Sizes of the two kernels: ``matmul`` x ``matmul`` times ``matmul`` x ``matmul``, and a 3x3 convolution
    of ``channels`` to ``channels`` on a ``height`` x ``width`` map (padding 1, batch 1)."""
    matmul: int = 2048
    channels: int = 128
    height: int = 128
    width: int = 256

    def __post_init__(self) -> None:
        bad = {name: value for name, value in asdict(self).items() if not (isinstance(value, int) and value >= 1)}
        if bad:
            raise ValueError(f'roof kernel sizes must be positive integers, got {bad}')

    def macs(self, operation: str) -> int:
        """Multiply-adds of one call of ``operation``."""
        if operation == 'matmul':
            return self.matmul**3
        return self.channels * self.channels * 9 * self.height * self.width

    def describe(self) -> Dict[str, str]:
        return dict(matmul=f'{self.matmul}x{self.matmul} @ {self.matmul}x{self.matmul}',
                    conv=f'3x3 convolution, {self.channels}->{self.channels} channels, {self.height}x{self.width}, '
                    'batch 1, channels-last')


# A kernel builder prepares inputs (and packed weights) once and returns the call to time.
KernelBuilder = Callable[[RoofShapes], Callable[[], object]]


def _torch_matmul(dtype: torch.dtype) -> KernelBuilder:

    def build(shapes: RoofShapes) -> Callable[[], object]:
        generator = torch.Generator().manual_seed(0)
        first, second = (torch.randn(shapes.matmul, shapes.matmul, generator=generator).to(dtype) for _ in range(2))
        return lambda: torch.mm(first, second)

    return build


def _torch_conv(dtype: torch.dtype) -> KernelBuilder:

    def build(shapes: RoofShapes) -> Callable[[], object]:
        generator = torch.Generator().manual_seed(0)
        channels = shapes.channels
        images = torch.randn(1, channels, shapes.height, shapes.width, generator=generator)
        weight = torch.randn(channels, channels, 3, 3, generator=generator) / (3 * channels**0.5)
        images, weight = (t.to(dtype).contiguous(memory_format=torch.channels_last) for t in (images, weight))

        def run() -> object:
            with torch.inference_mode():
                return F.conv2d(images, weight, padding=1)

        return run

    return build


def _check_onednn() -> None:
    """Raises ValueError if torch was built without oneDNN, whose integer kernels the int8 roof runs."""
    if not torch.backends.mkldnn.is_available():
        raise ValueError('the int8 roof runs oneDNN\'s integer kernels, and this torch build has no oneDNN '
                         '(torch.backends.mkldnn.is_available() is False); skip the roof with --no-roof')


def _int8_matmul(shapes: RoofShapes) -> Callable[[], object]:
    _check_onednn()
    generator = torch.Generator().manual_seed(0)
    size = shapes.matmul
    inputs = torch.randint(0, 256, (size, size), generator=generator, dtype=torch.uint8)
    weight = torch.randint(-127, 128, (size, size), generator=generator, dtype=torch.int8)
    packed = torch.ops.onednn.qlinear_prepack(weight, [size, size])
    scales, zero_points = torch.full((size, ), 0.05), torch.zeros(size, dtype=torch.long)
    # inputs @ weight^T, uint8 x int8 requantised to uint8 as a quantised network's layers are.
    return lambda: torch.ops.onednn.qlinear_pointwise(inputs, 0.05, 128, packed, scales, zero_points, None, 0.5, 128,
                                                      None, 'none', [], '')


def _int8_conv(shapes: RoofShapes) -> Callable[[], object]:
    _check_onednn()
    generator = torch.Generator().manual_seed(0)
    channels, shape = shapes.channels, [1, shapes.channels, shapes.height, shapes.width]
    images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    images = images.contiguous(memory_format=torch.channels_last)
    weight = torch.randint(-127, 128, (channels, channels, 3, 3), generator=generator, dtype=torch.int8)
    scales, zero_points = torch.full((channels, ), 0.05), torch.zeros(channels, dtype=torch.long)
    geometry = ([1, 1], [1, 1], [1, 1], 1)  # stride, padding, dilation, groups
    packed = torch.ops.onednn.qconv_prepack(weight, scales, 0.05, 128, *geometry, shape)
    return lambda: torch.ops.onednn.qconv2d_pointwise(images, 0.05, 128, packed, scales, zero_points, None, *geometry,
                                                      0.5, 128, None, 'none', [], '')


#: (precision, operation) -> (kernel name, builder). The float32 and bf16 kernels are torch's, on tensors
#: of that dtype (autocast routes to the same oneDNN kernels, plus a cast of the inputs per call).
#: int8 runs oneDNN's quantized linear and convolution through torch (``torch.ops.onednn``, the kernels
#: torch's x86 int8 inference lowers to): uint8 activations, int8 weights per output channel, requantised
#: to uint8. oneDNN picks the best integer instructions the CPU has (AMX where present, else
#: AVX512_VNNI/AVX_VNNI); of the int8 kernels compared on this project's machines it was the fastest for
#: both operations. Also compared: torch's quantized engines fbgemm and x86 (slower), ``torch._int_mm``
#: (no AMX path), onnxruntime's MatMulInteger (close to oneDNN for the product) and its QLinearConv
#: (several times slower for the convolution).
KERNELS: Dict[Tuple[str, str], Tuple[str, KernelBuilder]] = {
    ('float32', 'matmul'): ('torch.mm float32', _torch_matmul(torch.float32)),
    ('float32', 'conv'): ('torch conv2d float32 channels-last', _torch_conv(torch.float32)),
    ('bf16', 'matmul'): ('torch.mm bfloat16', _torch_matmul(torch.bfloat16)),
    ('bf16', 'conv'): ('torch conv2d bfloat16 channels-last', _torch_conv(torch.bfloat16)),
    ('int8', 'matmul'): ('oneDNN qlinear u8s8 (torch.ops.onednn)', _int8_matmul),
    ('int8', 'conv'): ('oneDNN qconv2d u8s8 channels-last (torch.ops.onednn)', _int8_conv),
}


def _best_seconds(run: Callable[[], object], calls: int, min_seconds: float) -> float:
    """The fastest of at least ``calls`` timed calls, more until ``min_seconds`` have passed, after one
    untimed call (packing, first-touch paging). The short kernels get more tries, so one that a busy
    machine delays does not decide their rate."""
    run()
    best, count, began = float('inf'), 0, time.perf_counter()
    while count < calls or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
        count += 1
    return best


def measure_roof(shapes: RoofShapes = RoofShapes(), calls: int = 10, min_seconds: float = 0.25,
                 threads: Optional[int] = None) -> dict:
    """The dense rate of every precision with ``threads`` torch threads (default: torch's current setting),
    each kernel the best of at least ``calls`` calls and of as many as fit in ``min_seconds``.

    Returns a JSON-ready dict: per precision its ``matmul`` and ``conv`` rates in GMAC/s, the better of them
    as ``roof``, and the kernels run (``kernels``); the sizes, calls and threads they were measured with.

    Raises:
        ValueError: for fewer than one call or thread, or a negative ``min_seconds``.
    """
    if calls < 1:
        raise ValueError(f'the roof needs at least one timed call per kernel, got calls={calls}')
    if min_seconds < 0:
        raise ValueError(f'min_seconds must not be negative, got {min_seconds}')
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f'threads must be at least 1, got {threads}')
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        roof: dict = dict(unit='GMAC/s', threads=threads, calls=calls, min_seconds=min_seconds,
                          shapes=asdict(shapes), operations=shapes.describe())
        for precision in PRECISIONS:
            entry: dict = dict(kernels={})
            for operation in OPERATIONS:
                name, build = KERNELS[precision, operation]
                seconds = _best_seconds(build(shapes), calls, min_seconds)
                entry[operation] = shapes.macs(operation) / seconds / 1e9
                entry['kernels'][operation] = name
            entry['roof'] = max(entry[operation] for operation in OPERATIONS)
            roof[precision] = entry
        roof['seconds'] = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return roof


# ----------------------------------------------------------------------------------------------------------
# A benchmark row against the roof.

# Variant steps (``tools/analysis_tools/benchmark.py --variants``, joined by '+') that run the network in bfloat16.
BF16_STEPS = frozenset({'amp', 'bf16', 'openvino-bf16'})


def variant_precision(variant: str) -> str:
    """The precision whose roof a variant is held against: 'int8' if a step names int8 (e.g.
    ``onnxruntime-int8``), 'bf16' for a bfloat16 step (:data:`BF16_STEPS`), else 'float32'.

    On CUDA the 'amp' step runs float16; the roof is this CPU's, so a CUDA run has none to compare with.
    """
    steps = variant.split('+')
    if any('int8' in step for step in steps):
        return 'int8'
    if any(step in BF16_STEPS for step in steps):
        return 'bf16'
    return 'float32'


def achieved_rate(gflops: Optional[float], median_s: float, precision: str,
                  roof: Optional[dict]) -> Tuple[Optional[float], Optional[float]]:
    """A row's achieved GMAC/s (its multiply-adds per call over its median seconds) and its share of the roof
    of ``precision``; None where the multiply-adds were not counted or there is no roof."""
    if gflops is None:
        return None, None
    if not median_s > 0:
        raise ValueError(f'a median time must be positive, got {median_s}')
    achieved = gflops / median_s
    if roof is None:
        return achieved, None
    return achieved, achieved / roof[precision]['roof']


def annotate_rows(condition: dict, roof: Optional[dict], task: str) -> None:
    """Add ``precision``, ``achieved_gmacs`` and ``roof_fraction`` to every row of one allocator condition
    of ``tools/analysis_tools/benchmark.py``'s results, in place.

    Only inference rows get rates: a training step's multiply-adds (backward included) are not counted,
    only its forward's, so its rows hold None.
    """
    for name, row in condition['results'].items():
        precision = variant_precision(name)
        gflops = row.get('gflops') if task == 'inference' else None
        row['precision'] = precision
        row['achieved_gmacs'], row['roof_fraction'] = achieved_rate(gflops, row['median_s'], precision, roof)


def summary(roof: dict) -> List[str]:
    """One line per precision for the tool's printout."""
    return [f"{precision}: {roof[precision]['roof']:.0f} GMAC/s (matmul {roof[precision]['matmul']:.0f}, "
            f"conv {roof[precision]['conv']:.0f}; {roof[precision]['kernels']['matmul']}, "
            f"{roof[precision]['kernels']['conv']})" for precision in PRECISIONS]
