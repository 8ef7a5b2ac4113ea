"""Conv-BN folding for inference across the plugin's and mmseg's models.

:func:`fuse_conv_bn` lets plugin modules that know how to fold themselves do so (they define a
``fold_bn()`` method, see :class:`FoldsOwnBatchNorm`) and hands every other layer to
``mmcv.cnn.fuse_conv_bn``, so mixed models (a plugin backbone with an mmseg head, mmseg models with
plugin blocks inside) are folded in one call.
"""
from typing import List, Protocol, Tuple, runtime_checkable

import torch.nn as nn
from mmcv.cnn import fuse_conv_bn as mmcv_fuse_conv_bn

__all__ = ['FoldsOwnBatchNorm', 'fuse_conv_bn']


@runtime_checkable
class FoldsOwnBatchNorm(Protocol):
    """A module that folds the batch norms of its whole subtree into the preceding convolutions.

    ``fold_bn()`` works in place with the running statistics, must be idempotent and is
    responsible for everything inside the module (it may call :func:`fuse_conv_bn` on children
    it does not handle itself). :func:`fuse_conv_bn` never descends into such a module.
    """

    def fold_bn(self) -> None:
        """Fold this module's batch norms in place."""


def _folds_itself(module: nn.Module) -> bool:
    return callable(getattr(type(module), 'fold_bn', None))


class _FoldedElsewhere(nn.Identity):
    """Stands in for a self-folding module while mmcv folds the rest of the model."""


def _detach_self_folding(module: nn.Module,
                         detached: List[Tuple[nn.Module, str, nn.Module]]) -> None:
    """Swap every outermost self-folding descendant of ``module`` for a placeholder, recording it."""
    for name, child in module.named_children():
        if _folds_itself(child):
            detached.append((module, name, child))
            module._modules[name] = _FoldedElsewhere()
        else:
            _detach_self_folding(child, detached)


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every foldable conv-BN pair of ``model`` in place, for inference; returns ``model``.

    Plugin modules with a ``fold_bn()`` method (e.g. :class:`mmseg_ext.ERFNet`, whose downsampler's
    norm spans conv and max-pool channels) fold themselves; all other layers go through
    ``mmcv.cnn.fuse_conv_bn``, which folds a ``BatchNorm``/``SyncBatchNorm`` into the ``nn.Conv2d``
    before it in the same parent module and replaces the norm with ``nn.Identity``.

    Outputs in eval mode are unchanged up to float rounding; the folded model should not be trained.
    """
    if _folds_itself(model):
        model.fold_bn()
        return model
    detached: List[Tuple[nn.Module, str, nn.Module]] = []
    _detach_self_folding(model, detached)
    try:
        mmcv_fuse_conv_bn(model)
    finally:
        for parent, name, child in detached:
            parent._modules[name] = child
    for _, _, child in detached:
        child.fold_bn()
    return model
