"""SegFormer's all-MLP decoder in mmseg's and in the official (NVlabs / Hugging Face) form."""
from typing import List, Sequence

import torch
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import resize
from torch import Tensor, nn

from mmseg_ext.errors import InvalidArgumentError
from mmseg_ext.registry import MODELS

__all__ = ['SegformerHead']

HEAD_STYLES = ('mmseg', 'official')


@MODELS.register_module()
class SegformerHead(BaseDecodeHead):
    """The all-MLP head of SegFormer (Xie et al., NeurIPS 2021), a drop-in for mmseg's ``SegformerHead``.

    Each input stage is projected to ``channels`` by a 1x1 convolution and upsampled to the first
    stage's resolution; the concatenation is fused by a 1x1 convolution with norm and ReLU, then
    dropout and the classifier (``conv_seg``) follow. Two forms exist:

    * ``head_style='mmseg'`` (default): mmseg's head. Projections are ``ConvModule`` s with
      ``norm_cfg`` and ``act_cfg``; concatenation order c1, c2, c3, c4.
    * ``head_style='official'``: the decoder of the NVlabs and Hugging Face code. Projections are linear
      layers with bias and neither norm nor activation (stored as 1x1 convolutions,
      ``convs.{i}.conv.weight/bias``); concatenation order c4, c3, c2, c1; the fusion has no bias and is
      followed by ``norm_cfg`` (BN) and ReLU. Official widths: 256 for MiT-B0/B1, 768 for B2-B5.

    Args:
        interpolate_mode: Upsampling mode of the projected stages.
        head_style: ``'mmseg'`` or ``'official'``.
        **kwargs: ``BaseDecodeHead`` arguments (``in_channels``, ``channels``, ``num_classes``, ...);
            ``input_transform`` is always ``'multiple_select'``.
    """

    def __init__(self, interpolate_mode: str = 'bilinear', head_style: str = 'mmseg', **kwargs) -> None:
        if head_style not in HEAD_STYLES:
            raise InvalidArgumentError(f'head_style={head_style!r} is not supported; choose one of '
                                       f'{", ".join(repr(style) for style in HEAD_STYLES)}')
        in_channels, in_index = kwargs.get('in_channels'), kwargs.get('in_index', -1)
        if not isinstance(in_channels, (list, tuple)) or not isinstance(in_index, (list, tuple)):
            raise InvalidArgumentError(f'SegformerHead takes one input per stage: in_channels and in_index must be '
                                       f'lists, got in_channels={in_channels!r} and in_index={in_index!r}')
        if len(in_channels) != len(in_index):
            raise InvalidArgumentError(f'in_channels {list(in_channels)} and in_index {list(in_index)} '
                                       f'must have the same length')
        super().__init__(input_transform='multiple_select', **kwargs)
        self.interpolate_mode = interpolate_mode
        self.head_style = head_style
        num_inputs = len(self.in_channels)
        official = head_style == 'official'
        self.convs = nn.ModuleList([
            ConvModule(in_channels=channels, out_channels=self.channels, kernel_size=1, stride=1,
                       norm_cfg=None if official else self.norm_cfg, act_cfg=None if official else self.act_cfg)
            for channels in self.in_channels
        ])
        self.fusion_conv = ConvModule(in_channels=self.channels * num_inputs, out_channels=self.channels,
                                      kernel_size=1, norm_cfg=self.norm_cfg)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Backbone feature maps (strides 4, 8, 16, 32) in, logits at the first one's resolution out."""
        inputs: List[Tensor] = self._transform_inputs(inputs)
        size = inputs[0].shape[2:]
        outs = [
            resize(input=conv(x), size=size, mode=self.interpolate_mode, align_corners=self.align_corners)
            for x, conv in zip(inputs, self.convs)
        ]
        if self.head_style == 'official':
            outs = outs[::-1]
        return self.cls_seg(self.fusion_conv(torch.cat(outs, dim=1)))
