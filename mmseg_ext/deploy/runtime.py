"""Sessions for exported segmentors: ONNX Runtime (tuned CPU options) and OpenVINO, both behind one
runner that checks shapes, chosen by a runtime name (:func:`open_session`).

ONNX Runtime choices (docs/deploy.md explains them): all graph optimisations (constant folding,
conv+BN/activation fusion, layout transforms to NCHWc blocks on x86), ``threads`` intra-op threads and
one inter-op thread (the graphs are a chain, so parallel branches gain nothing), sequential execution,
the CPU memory arena and memory pattern planning (the shapes repeat from call to call). Inputs are bound
with IO binding so the image is not copied again by the session.

OpenVINO compiles the same ``.onnx`` file for its CPU plugin with a latency hint (one stream),
``threads`` inference threads and an explicit inference precision: ``float32``, or ``bf16`` on CPUs whose
instruction set has bf16 arithmetic (OpenVINO would otherwise pick bf16 by itself on AMX machines, and
silently run float32 where bf16 is missing).
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from mmseg_ext.precision import PRECISIONS
from .metadata import INPUT_NAME, DeployError, DeployMetadata, check_onnx_path, read_metadata

__all__ = ['session_options', 'OnnxSegmentorSession', 'OpenVinoSegmentorSession', 'open_session', 'RUNTIMES',
           'PRECISIONS', 'import_openvino', 'openvino_capabilities', 'require_openvino_bf16']

RUNTIMES = ('onnxruntime', 'openvino')
# OpenVINO's names for the precisions above (its INFERENCE_PRECISION_HINT values).
_OPENVINO_PRECISION = {'float32': 'f32', 'bf16': 'bf16'}


def session_options(threads: Optional[int] = None, optimization: str = 'all', spinning: bool = True):
    """``onnxruntime.SessionOptions`` for CPU inference of a segmentation graph.

    Args:
        threads: intra-op threads (None: onnxruntime's default, one per physical core).
        optimization: ``'all'``, ``'extended'``, ``'basic'`` or ``'none'`` (graph optimisation level).
        spinning: let idle intra-op threads spin between operators (lower latency on an otherwise idle
            machine; turn off on a shared one).
    """
    import onnxruntime as ort
    levels = {'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              'extended': ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              'none': ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if optimization not in levels:
        raise DeployError(f'unknown graph optimisation level {optimization!r}: choose one of {", ".join(levels)}')
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        _check_threads(threads)
        options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.add_session_config_entry('session.intra_op.allow_spinning', '1' if spinning else '0')
    options.log_severity_level = 3  # errors only: the optimiser's notes are not for users
    return options


def _check_threads(threads: int) -> None:
    if threads < 1:
        raise DeployError(f'threads must be at least 1, got {threads}')


def _load_error(path: str, error: Exception) -> DeployError:
    """One line for a file a runtime cannot load (runtimes raise their own exception types)."""
    reason = ' '.join(str(error).split())
    if len(reason) > 300:
        reason = reason[:300] + '...'
    return DeployError(f'cannot load ONNX file {path}: {type(error).__name__}: {reason}')


def _open_session(path: str, options):
    """An InferenceSession, or :class:`DeployError` in one line for a missing or unreadable file."""
    import onnxruntime as ort
    check_onnx_path(path)
    try:
        return ort.InferenceSession(path, sess_options=options, providers=['CPUExecutionProvider'])
    except Exception as error:  # onnxruntime raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        raise _load_error(path, error) from None


class _SegmentorSession:
    """What every runtime's session shares: the file's metadata, the shape checks, batching for graphs
    of a fixed batch, and tensors in and out. Subclasses run one batch in :meth:`_run_one`."""

    runtime = ''
    precision = 'float32'

    def __init__(self, path: str, meta: DeployMetadata, fixed_batch: Optional[int]):
        self.path = path
        self.meta = meta
        self.fixed_batch = fixed_batch

    @property
    def static_shape(self) -> Optional[Tuple[int, int]]:
        return self.meta.shape

    def check_fits(self, height: int, width: int) -> None:
        """Refuse an image of another size than a static graph's, naming both sizes, or one of a size a
        dynamic graph is not exact for."""
        divisor = self.meta.size_divisor
        if self.static_shape is None and divisor and (height % divisor or width % divisor):
            raise DeployError(f'an input of {height}x{width} does not fit the dynamic graph in {self.path}, which '
                              f'reproduces the model only for sizes divisible by {divisor}: pad at test time '
                              f'(data_preprocessor test_cfg=dict(size_divisor={divisor})) or export with --shape '
                              f'{height} {width}')
        if self.static_shape is not None and (height, width) != tuple(self.static_shape):
            graph_h, graph_w = self.static_shape
            raise DeployError(f'an input of {height}x{width} does not fit the static graph of {graph_h}x{graph_w} '
                              f'in {self.path}: export with --dynamic-shape, or with --shape {height} {width}')

    def run_numpy(self, images: np.ndarray) -> np.ndarray:
        """Graph output for a float32 array (N, 3, H, W) in the graph's input layout."""
        self.check_fits(*images.shape[-2:])
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.fixed_batch is not None and images.shape[0] != self.fixed_batch:
            if self.fixed_batch != 1:
                raise DeployError(f'{self.path} takes batches of {self.fixed_batch}, got {images.shape[0]}')
            return np.concatenate([self._run_one(image[None]) for image in images])
        return self._run_one(images)

    def _run_one(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Graph output for a CPU tensor (N, 3, H, W), as a tensor."""
        return torch.from_numpy(self.run_numpy(images.detach().cpu().numpy()))


class OnnxSegmentorSession(_SegmentorSession):
    """An exported segmentor in onnxruntime: images (N, 3, H, W) in, logits or labels at (H, W) out.

    Static graphs take exactly their exported size (and batch); any other size is refused naming both.
    """

    runtime = 'onnxruntime'

    def __init__(self, path: str, threads: Optional[int] = None, optimization: str = 'all',
                 spinning: bool = True):
        self.session = _open_session(path, session_options(threads, optimization, spinning))
        meta = read_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise DeployError(f'{path}: expected one input named {INPUT_NAME!r}, found '
                              f'{[i.name for i in inputs]}')
        batch = inputs[0].shape[0]
        super().__init__(path, meta, batch if isinstance(batch, int) else None)
        self.output_name = self.session.get_outputs()[0].name

    def _run_one(self, images: np.ndarray) -> np.ndarray:
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, images)
        binding.bind_output(self.output_name)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def import_openvino():
    """The ``openvino`` module, or a one-line :class:`DeployError` saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise DeployError('the openvino runtime needs the openvino package: pip install openvino '
                          '(or pip install "mmseg_ext[deploy]")') from None
    return openvino


def openvino_capabilities() -> List[str]:
    """What OpenVINO's CPU plugin reports it can run on this CPU (``OPTIMIZATION_CAPABILITIES``, e.g.
    ``['FP32', 'INT8', 'BF16', ...]``)."""
    return list(import_openvino().Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))


def require_openvino_bf16() -> None:
    """Refuse bf16 in one line where OpenVINO's CPU plugin has no bf16 kernels for this CPU (it would run
    float32 instead without a word)."""
    capabilities = openvino_capabilities()
    if 'BF16' not in capabilities:
        raise DeployError('OpenVINO bf16 needs a CPU with the AVX512_BF16 or AMX_BF16 instruction set, which this '
                          f'CPU lacks (OpenVINO CPU capabilities: {", ".join(capabilities)}): use float32')


def _file_metadata(path: str) -> DeployMetadata:
    """The metadata record of an ONNX file, read without building a session."""
    import onnx
    check_onnx_path(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise _load_error(path, error) from None
    return read_metadata({entry.key: entry.value for entry in model.metadata_props}, path)


class OpenVinoSegmentorSession(_SegmentorSession):
    """The same exported file compiled by OpenVINO for the CPU; the interface of
    :class:`OnnxSegmentorSession`.

    Args:
        threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default, every core).
        precision: ``'float32'`` or ``'bf16'`` (``INFERENCE_PRECISION_HINT``; bf16 is refused on a CPU
            without bf16 arithmetic).
    """

    runtime = 'openvino'

    def __init__(self, path: str, threads: Optional[int] = None, precision: str = 'float32'):
        openvino = import_openvino()
        if precision not in PRECISIONS:
            raise DeployError(f'unknown precision {precision!r}: choose one of {", ".join(PRECISIONS)}')
        meta = _file_metadata(path)
        if precision == 'bf16':
            require_openvino_bf16()
        config: Dict[str, object] = {'PERFORMANCE_HINT': 'LATENCY',
                                     'INFERENCE_PRECISION_HINT': _OPENVINO_PRECISION[precision]}
        if threads is not None:
            _check_threads(threads)
            config['INFERENCE_NUM_THREADS'] = threads
        try:
            self.compiled = openvino.Core().compile_model(path, 'CPU', config)
        except Exception as error:  # OpenVINO raises RuntimeError with multi-line reports
            raise _load_error(path, error) from None
        inputs = self.compiled.inputs
        if len(inputs) != 1 or INPUT_NAME not in inputs[0].get_names():
            raise DeployError(f'{path}: expected one input named {INPUT_NAME!r}, found '
                              f'{[sorted(i.get_names()) for i in inputs]}')
        batch = inputs[0].get_partial_shape()[0]
        super().__init__(path, meta, batch.get_length() if batch.is_static else None)
        self.precision = precision
        self.request = self.compiled.create_infer_request()

    def _run_one(self, images: np.ndarray) -> np.ndarray:
        self.request.infer({INPUT_NAME: images}, share_inputs=True, share_outputs=True)
        return self.request.get_output_tensor(0).data.copy()  # the request reuses its output buffer


def open_session(path: str, runtime: str = 'onnxruntime', threads: Optional[int] = None,
                 precision: str = 'float32') -> _SegmentorSession:
    """The session of ``runtime`` (one of :data:`RUNTIMES`) for an exported file.

    Raises:
        DeployError: an unknown runtime or precision, a precision the runtime or this CPU cannot run,
            OpenVINO not installed, or a missing or unreadable file.
    """
    if runtime not in RUNTIMES:
        raise DeployError(f'unknown runtime {runtime!r}: choose one of {", ".join(RUNTIMES)}')
    if precision not in PRECISIONS:
        raise DeployError(f'unknown precision {precision!r}: choose one of {", ".join(PRECISIONS)}')
    if runtime == 'openvino':
        return OpenVinoSegmentorSession(path, threads=threads, precision=precision)
    if precision != 'float32':
        raise DeployError(f'ONNX Runtime\'s CPU provider has no {precision} kernels: run {precision} with '
                          'the openvino runtime')
    return OnnxSegmentorSession(path, threads=threads)
