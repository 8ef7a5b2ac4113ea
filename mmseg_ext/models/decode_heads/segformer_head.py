"""SegFormer's all-MLP decoder in mmseg's and in the official (NVlabs / Hugging Face) form."""
from typing import List, Sequence

import torch.nn.functional as F
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
    dropout and the classifier (``conv_seg``) follow. The fusion convolution is computed block by block
    (:meth:`fuse`), without materialising the concatenation. Two forms exist:

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
        return self.cls_seg(self.fuse(outs))

    def fuse(self, parts: Sequence[Tensor]) -> Tensor:
        """``fusion_conv`` applied to the channel concatenation of ``parts`` (each ``[B, channels, H, W]``).

        A 1x1 convolution of a concatenation is the sum of the parts' products with the matching
        input-channel blocks of the weight: the same products and sums, only the reduction over input
        channels is split into ``len(parts)`` partial sums, accumulated in place into one buffer. This
        avoids the concatenated copy (``[B, len(parts) * channels, H, W]``, the head's largest tensor) and,
        in training, its gradient, which is allocated while every saved activation is still alive. The
        products are matrix products of ``[B*H*W, channels]`` pixel rows, views of channels-last maps
        (what the backbone's and the projections' outputs are); other layouts are copied to rows first.
        """
        fusion = self.fusion_conv
        batch, _, height, width = parts[0].shape
        weight_blocks = fusion.conv.weight.flatten(1).split(self.channels, dim=1)  # [channels, channels] each

        def pixel_rows(feature_map: Tensor) -> Tensor:
            return feature_map.permute(0, 2, 3, 1).reshape(-1, feature_map.shape[1])

        # The bias is only there when a norm has been folded into the fusion convolution.
        out = F.linear(pixel_rows(parts[0]), weight_blocks[0], fusion.conv.bias)
        # In-place products are not autocast: under autocast (or with bf16 weights) the accumulator has the
        # dtype F.linear gave it, and the other operands are cast to it.
        for part, weight in zip(parts[1:], weight_blocks[1:]):
            out = out.addmm_(pixel_rows(part).to(out.dtype), weight.t().to(out.dtype))
        out = out.view(batch, height, width, -1).permute(0, 3, 1, 2)  # channels-last [B, channels, H, W]
        if fusion.with_norm:
            out = fusion.norm(out)
        return fusion.activate(out) if fusion.with_activation else out
