"""ONNX Runtime sessions for exported segmentors: tuned CPU options and a runner that checks shapes.

Choices (docs/deploy.md explains them): all graph optimisations (constant folding, conv+BN/activation
fusion, layout transforms to NCHWc blocks on x86), ``threads`` intra-op threads and one inter-op thread
(the graphs are a chain, so parallel branches gain nothing), sequential execution, the CPU memory arena
and memory pattern planning (the shapes repeat from call to call). Inputs are bound with IO binding so
the image is not copied again by the session.
"""
from typing import Optional, Tuple

import numpy as np
import torch

from .metadata import INPUT_NAME, DeployError, DeployMetadata, check_onnx_path, read_metadata

__all__ = ['session_options', 'OnnxSegmentorSession']


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
        if threads < 1:
            raise DeployError(f'threads must be at least 1, got {threads}')
        options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.add_session_config_entry('session.intra_op.allow_spinning', '1' if spinning else '0')
    options.log_severity_level = 3  # errors only: the optimiser's notes are not for users
    return options


def _open_session(path: str, options):
    """An InferenceSession, or :class:`DeployError` in one line for a missing or unreadable file."""
    import onnxruntime as ort
    check_onnx_path(path)
    try:
        return ort.InferenceSession(path, sess_options=options, providers=['CPUExecutionProvider'])
    except Exception as error:  # onnxruntime raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        reason = ' '.join(str(error).split())
        if len(reason) > 300:
            reason = reason[:300] + '...'
        raise DeployError(f'cannot load ONNX file {path}: {type(error).__name__}: {reason}') from None


class OnnxSegmentorSession:
    """An exported segmentor in onnxruntime: images (N, 3, H, W) in, logits or labels at (H, W) out.

    Static graphs take exactly their exported size (and batch); any other size is refused naming both.
    """

    def __init__(self, path: str, threads: Optional[int] = None, optimization: str = 'all',
                 spinning: bool = True):
        self.path = path
        self.session = _open_session(path, session_options(threads, optimization, spinning))
        self.meta: DeployMetadata = read_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise DeployError(f'{path}: expected one input named {INPUT_NAME!r}, found '
                              f'{[i.name for i in inputs]}')
        batch = inputs[0].shape[0]
        self.fixed_batch: Optional[int] = batch if isinstance(batch, int) else None
        self.output_name = self.session.get_outputs()[0].name

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
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, images)
        binding.bind_output(self.output_name)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Graph output for a CPU tensor (N, 3, H, W), as a tensor."""
        return torch.from_numpy(self.run_numpy(images.detach().cpu().numpy()))
