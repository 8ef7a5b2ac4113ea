"""Conv-BN folding for inference across the plugin's and mmseg's models.

:func:`fuse_conv_bn` lets plugin modules that know how to fold themselves do so (they define a
``fold_bn()`` method, see :class:`FoldsOwnBatchNorm`) and hands every other layer to
``mmcv.cnn.fuse_conv_bn``, so mixed models (a plugin backbone with an mmseg head, mmseg models with
plugin blocks inside) are folded in one call. A parent-library module that mmcv would fold wrongly or not
at all has a substitute: an equivalent plugin module, same weights and outputs, that folds itself. The
per-layer maths those modules use (:func:`fold_bn_into_conv`, which also folds a slice of a norm's
channels) lives here too.
"""
from typing import Callable, Dict, List, Optional, Protocol, Tuple, Type, Union, runtime_checkable

import torch
import torch.nn as nn
from mmcv.cnn import fuse_conv_bn as mmcv_fuse_conv_bn
from torch import Tensor

from mmseg_ext.errors import InvalidArgumentError

__all__ = ['FoldsOwnBatchNorm', 'fuse_conv_bn', 'fold_bn_into_conv', 'bn_scale_and_shift', 'is_foldable_bn']


@runtime_checkable
class FoldsOwnBatchNorm(Protocol):
    """A module that folds the batch norms of its whole subtree into the preceding convolutions.

    ``fold_bn()`` works in place with the running statistics, must be idempotent and is
    responsible for everything inside the module (it may call :func:`fuse_conv_bn` on children
    it does not handle itself). :func:`fuse_conv_bn` never descends into such a module.
    """

    def fold_bn(self) -> None:
        """Fold this module's batch norms in place."""


def _folding_substitutes() -> Dict[Type[nn.Module], Callable[[nn.Module], nn.Module]]:
    """Exact module type -> a function returning an equivalent module (same weights, statistics, mode) that
    folds itself: for parent-library modules mmcv's folding gets wrong or leaves unfolded."""
    # Imported here: the plugin's models import this module.
    from mmseg.models.backbones import erfnet as mmseg_erfnet

    from mmseg_ext.models.backbones.erfnet import plugin_block_from_mmseg

    # The downsampler's norm follows the concatenation of conv and max-pool channels (mmcv would fold it into the
    # conv alone); mmcv does not fold the upsampler's transposed conv at all.
    return {mmseg_erfnet.DownsamplerBlock: plugin_block_from_mmseg,
            mmseg_erfnet.UpsamplerBlock: plugin_block_from_mmseg}


def _folds_itself(module: nn.Module) -> bool:
    return callable(getattr(type(module), 'fold_bn', None))


class _FoldedElsewhere(nn.Identity):
    """Stands in for a self-folding module while mmcv folds the rest of the model."""


def _detach_self_folding(module: nn.Module, detached: List[Tuple[nn.Module, str, nn.Module]],
                         substitutes: Dict[Type[nn.Module], Callable[[nn.Module], nn.Module]]) -> None:
    """Swap every outermost self-folding descendant of ``module`` for a placeholder, recording it (a module
    with a substitute is first replaced by it, for good)."""
    for name, child in module.named_children():
        if type(child) in substitutes:
            child = substitutes[type(child)](child)
            module._modules[name] = child
        if _folds_itself(child):
            detached.append((module, name, child))
            module._modules[name] = _FoldedElsewhere()
        else:
            _detach_self_folding(child, detached, substitutes)


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every foldable conv-BN pair of ``model`` in place, for inference; returns ``model``.

    Plugin modules with a ``fold_bn()`` method (e.g. :class:`mmseg_ext.ERFNet`, whose downsampler's
    norm spans conv and max-pool channels) fold themselves; all other layers go through
    ``mmcv.cnn.fuse_conv_bn``, which folds a ``BatchNorm``/``SyncBatchNorm`` into the ``nn.Conv2d``
    before it in the same parent module and replaces the norm with ``nn.Identity``.

    A module mmcv would fold wrongly or not at all is first replaced by its substitute: mmseg's ERFNet
    ``DownsamplerBlock`` (its norm follows the concatenation of conv and max-pool channels) and
    ``UpsamplerBlock`` (a transposed conv) by the plugin's blocks with the same weights.

    Outputs in eval mode are unchanged up to float rounding; the folded model should not be trained.

    Raises:
        InvalidArgumentError: if ``model`` itself is such a module (it cannot be replaced in place).
    """
    substitutes = _folding_substitutes()
    if type(model) in substitutes:
        raise InvalidArgumentError(f'a bare {type(model).__module__}.{type(model).__name__} cannot be folded in '
                                   'place (mmcv cannot fold it; the plugin substitutes its own block inside a '
                                   'parent module): fold the model that contains it')
    if _folds_itself(model):
        model.fold_bn()
        return model
    detached: List[Tuple[nn.Module, str, nn.Module]] = []
    _detach_self_folding(model, detached, substitutes)
    try:
        mmcv_fuse_conv_bn(model)
    finally:
        for parent, name, child in detached:
            parent._modules[name] = child
    for _, _, child in detached:
        child.fold_bn()
    return model


def is_foldable_bn(module: nn.Module) -> bool:
    """Whether ``module`` is a batch norm with running statistics to fold."""
    return (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            and module.running_mean is not None and module.running_var is not None)


def bn_scale_and_shift(bn: nn.modules.batchnorm._BatchNorm) -> Tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) == x * scale + shift`` in eval mode."""
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(inv_std)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv_std)
    scale = weight * inv_std
    shift = bias - bn.running_mean.double() * scale
    return scale, shift


@torch.no_grad()
def fold_bn_into_conv(conv: Union[nn.Conv2d, nn.ConvTranspose2d], bn: nn.modules.batchnorm._BatchNorm,
                      channels: Optional[slice] = None) -> None:
    """Fold the eval-mode batch norm ``bn`` (or its ``channels`` slice) into ``conv`` in place.

    Args:
        conv: Convolution whose output feeds ``bn``; gets a bias if it had none.
        bn: Batch norm with running statistics.
        channels: The slice of ``bn``'s channels that ``conv`` produces (all channels when None).

    Raises:
        InvalidArgumentError: If the channel counts disagree or ``conv`` is a grouped transposed convolution.
    """
    scale, shift = bn_scale_and_shift(bn)
    if channels is not None:
        scale, shift = scale[channels], shift[channels]
    out_channels = conv.out_channels
    if scale.numel() != out_channels:
        raise InvalidArgumentError(f'cannot fold a batch norm over {scale.numel()} channels into a convolution '
                                   f'with {out_channels} output channels')
    weight = conv.weight.double()
    if isinstance(conv, nn.ConvTranspose2d):
        if conv.groups != 1:
            raise InvalidArgumentError(f'folding into a grouped transposed convolution (groups={conv.groups}) '
                                       'is not supported')
        weight = weight * scale.view(1, -1, 1, 1)  # weight is (in, out, kh, kw)
    else:
        weight = weight * scale.view(-1, 1, 1, 1)  # weight is (out, in / groups, kh, kw)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = bias * scale + shift
    conv.weight.copy_(weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
    else:
        conv.bias.copy_(bias.to(conv.bias.dtype))
