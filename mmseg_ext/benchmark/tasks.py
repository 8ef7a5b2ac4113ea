"""The timed tasks: one inference call (:func:`inference_runner`) or one training step
(:func:`train_step_runner`) of a variant, and how far a variant's output is from the baseline's
(:func:`max_difference`)."""
import contextlib
import copy
import logging
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import Tensor

from .variants import Subject

__all__ = ['image_metas', 'inference_runner', 'train_step_runner', 'max_difference']


def _call(subject: Subject, function: Callable[[], Any]) -> Any:
    with subject.autocast() if subject.autocast else contextlib.nullcontext():
        return function()


def image_metas(images: Tensor) -> List[dict]:
    """mmseg's image metas of a batch of unpadded ``images`` (as ``EncoderDecoder.predict`` builds them
    without data samples): one dict shared by every image."""
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
        metas = image_metas(images)
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
    for meta, label in zip(image_metas(images), labels):
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
