"""Class-weighted cross-entropy that, unlike mmseg 1.2.2's, accepts ignored pixels."""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmseg_ext.errors import InvalidArgumentError
from mmseg_ext.registry import MODELS

__all__ = ['ClassWeightedCrossEntropyLoss']


@MODELS.register_module()
class ClassWeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy with per-class weights, averaged by the weights of the non-ignored pixels.

    This is ``F.cross_entropy(logits, labels, weight=class_weight, ignore_index=...)``: the loss
    the ERFNet authors train with (``NLLLoss(weight)`` on log-softmax, the ignored label weighted 0).
    mmseg 1.2.2's ``CrossEntropyLoss(class_weight=...)`` computes its average factor by indexing the
    class weights with every label, ignored ones included, and fails on Cityscapes' label 255
    (open-mmlab/mmsegmentation#3734).

    Args:
        class_weight: One weight per class.
        loss_weight: Multiplier of the loss.
        loss_name: Name of the loss in the log; must start with ``loss_`` to be optimised.

    Raises:
        InvalidArgumentError: If ``class_weight`` is empty or has negative entries.
    """

    def __init__(self,
                 class_weight: Sequence[float],
                 loss_weight: float = 1.0,
                 loss_name: str = 'loss_ce') -> None:
        super().__init__()
        weights = torch.as_tensor(list(class_weight), dtype=torch.float32)
        if weights.ndim != 1 or weights.numel() == 0 or bool((weights < 0).any()):
            raise InvalidArgumentError(f'class_weight must be a non-empty list of weights >= 0, got {class_weight!r}')
        self.register_buffer('class_weight', weights, persistent=False)
        self.loss_weight = loss_weight
        self._loss_name = loss_name

    def forward(self,
                cls_score: Tensor,
                label: Tensor,
                weight: Optional[Tensor] = None,
                ignore_index: int = 255,
                **kwargs) -> Tensor:
        """Weighted mean cross-entropy of ``cls_score`` (N, C, H, W) against ``label`` (N, H, W), in float32.

        Raises:
            InvalidArgumentError: If the number of classes differs from ``len(class_weight)`` or a
                pixel-wise ``weight`` is given (not supported).
        """
        if cls_score.shape[1] != self.class_weight.numel():
            raise InvalidArgumentError(f'class_weight has {self.class_weight.numel()} entries but the logits '
                                       f'have {cls_score.shape[1]} classes')
        if weight is not None:
            raise InvalidArgumentError('ClassWeightedCrossEntropyLoss does not take pixel-wise weights '
                                       '(no pixel sampler)')
        # In float32 whatever the logits' dtype (autocast's rule for cross-entropy): the weight total of a
        # float16 batch overflows (a 512x1024 crop has 524288 pixels, float16's largest value is 65504) and
        # would turn the loss into 0, and a bfloat16 sum keeps 8 bits of it.
        cls_score = cls_score.float()
        class_weight = self.class_weight.float()
        valid = label != ignore_index
        total_weight = class_weight[label[valid]].sum()
        if total_weight == 0:  # nothing to learn from; keep the graph connected
            return cls_score.sum() * 0.
        losses = F.cross_entropy(cls_score, label, weight=class_weight, ignore_index=ignore_index,
                                 reduction='sum')
        return self.loss_weight * losses / total_weight

    @property
    def loss_name(self) -> str:
        """Name of the loss item in the log."""
        return self._loss_name
