"""mmseg's HRNet with the authors' fuse-layer upsampling available.

mmseg's ``HRModule`` upsamples a lower-resolution branch in the fuse layers with
``Upsample(scale_factor=2**k, align_corners=False)`` and then resizes the result to the target size
once more (a no-op when the sizes already agree). The authors' HRNet (HRNet-Semantic-Segmentation,
every branch including HRNet-OCR) resizes straight to the target size with
``align_corners=ALIGN_CORNERS``, which is ``True`` for all their released models. Features, and
hence logits of converted checkpoints, differ by far more than 1e-4 between the two.

:class:`HRNet` here is mmseg's ``HRNet`` (same constructor, modules and state-dict keys) with one
more argument, ``align_corners``:

* ``False`` (default): mmseg's numerics exactly; the second resize is skipped when it is a no-op;
* ``True``: the authors' numerics (one bilinear resize to the target size, corners aligned).
"""
from typing import List, Sequence, Tuple

import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import Sequential
from mmseg.models.backbones.hrnet import HRModule
from mmseg.models.backbones.hrnet import HRNet as MMSegHRNet
from mmseg.models.utils import Upsample
from torch import Tensor

from mmseg_ext.errors import InvalidArgumentError
from mmseg_ext.registry import MODELS

__all__ = ['HRNet', 'PluginHRModule']


class PluginHRModule(HRModule):
    """``HRModule`` whose fuse-layer upsampling follows ``align_corners``.

    Built by :meth:`HRNet._make_stage` with mmseg's arguments, so its submodules and state-dict keys are
    mmseg's.

    Args:
        *args, **kwargs: mmseg ``HRModule`` arguments.
        align_corners: ``True`` for the authors' single resize, ``False`` for mmseg's upsampling.
    """

    def __init__(self, *args, align_corners: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.align_corners = align_corners

    def _upsampled(self, lateral: nn.Sequential, feature: Tensor, size: Sequence[int]) -> Tensor:
        """Run a ``j > i`` fuse path (1x1 conv, BN, upsample) and bring it to ``size``."""
        for layer in lateral:
            if isinstance(layer, Upsample) and self.align_corners:
                continue  # replaced by the single resize below, as in the authors' code
            feature = layer(feature)
        if tuple(feature.shape[2:]) != tuple(size):
            feature = F.interpolate(feature, size=tuple(size), mode='bilinear',
                                    align_corners=self.align_corners)
        return feature

    def forward(self, x: List[Tensor]) -> List[Tensor]:
        """Run the branches, then fuse every output branch from all input branches."""
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        features = [branch(feature) for branch, feature in zip(self.branches, x)]
        fused = []
        for i, fuse_layer in enumerate(self.fuse_layers):
            size = features[i].shape[2:]
            total = None
            for j, feature in enumerate(features):
                if j == i:
                    term = feature
                elif j > i:
                    term = self._upsampled(fuse_layer[j], feature, size)
                else:
                    term = fuse_layer[j](feature)
                total = term if total is None else total + term
            fused.append(self.relu(total))
        return fused


@MODELS.register_module()
class HRNet(MMSegHRNet):
    """mmseg's HRNet plus ``align_corners`` for the fuse-layer upsampling.

    Args:
        extra: Stage settings, as for mmseg's ``HRNet``.
        *args: mmseg ``HRNet``'s other positional arguments, in its order.
        align_corners: ``True`` reproduces the authors' HRNet (their ``MODEL.ALIGN_CORNERS``);
            ``False`` reproduces mmseg's.
        **kwargs: Other mmseg ``HRNet`` arguments.
    """

    def __init__(self, extra: dict, *args, align_corners: bool = False, **kwargs) -> None:
        if not isinstance(align_corners, bool):
            raise InvalidArgumentError(f'align_corners must be True or False, got {align_corners!r}')
        # Set first: mmseg's constructor calls _make_stage, which reads it, for stages 2-4.
        self.align_corners = align_corners
        super().__init__(extra, *args, **kwargs)

    def _make_stage(self, layer_config: dict, in_channels: List[int],
                    multiscale_output: bool = True) -> Tuple[Sequential, List[int]]:
        """mmseg's stage of ``num_modules`` fuse modules, built as :class:`PluginHRModule`.

        Same arguments, modules and returned channels as mmseg's ``HRNet._make_stage``. Its zero-init
        residual ``block_init_cfg`` applies only to modules without ``init_cfg``, which every
        ``BaseModule`` has, so mmseg passes none; neither does this.
        """
        num_modules = layer_config['num_modules']
        modules = [
            PluginHRModule(
                layer_config['num_branches'],
                self.blocks_dict[layer_config['block']],
                layer_config['num_blocks'],
                in_channels,  # updated in place by the modules to their output channels
                layer_config['num_channels'],
                multiscale_output or index < num_modules - 1,  # only the last module may drop scales
                with_cp=self.with_cp,
                norm_cfg=self.norm_cfg,
                conv_cfg=self.conv_cfg,
                align_corners=self.align_corners) for index in range(num_modules)
        ]
        return Sequential(*modules), in_channels
