"""Object-contextual representations (OCR) head.

Yuan, Chen and Wang, "Object-Contextual Representations for Semantic Segmentation", ECCV 2020
(https://arxiv.org/abs/1909.11065). The head is the second stage of mmseg's
``CascadeEncoderDecoder``: the first stage (an ``FCNHead``) predicts soft object regions, this head

1. transforms the backbone features with a 3x3 conv (``bottleneck``),
2. gathers one representation per object region as the spatially softmax-weighted mean of the
   pixel features (``spatial_gather_module``),
3. lets every pixel attend over the region representations (``object_context_block``: pixel-region
   attention with separate query/key/value/out projections) and fuses the resulting object context
   with the pixel features by a 1x1 conv (``object_context_block.bottleneck``),
4. classifies each pixel (``conv_seg``, after the optional ``dropout_ratio`` dropout).

The module names, state-dict keys and outputs match ``mmseg.models.decode_heads.OCRHead`` for every
setting mmseg supports, so mmseg's OCRNet checkpoints load strictly. On top of it:

* ``scale > 1`` works as in the authors' code: the queries are computed on a max-pooled feature map
  and the object context is upsampled back (mmseg's head raises a ``RuntimeError`` there);
* the pixel-region attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`;
* the spatial-gather softmax temperature (``gather_scale``) and the value width
  (``value_channels``) are separate settings, as they are in the authors' code.

The authors' ``Dropout2d(0.05)`` at the end of ``SpatialOCR_Module`` sits directly before their
classifier, which is exactly where mmseg's ``dropout_ratio`` puts it, so ``dropout_ratio=0.05``
reproduces their head.
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.cascade_decode_head import BaseCascadeDecodeHead
from mmseg.utils import OptConfigType
from torch import Tensor

from mmseg_ext.errors import InvalidArgumentError
from mmseg_ext.registry import MODELS

__all__ = ['OCRHead', 'ObjectAttentionBlock', 'SpatialGatherModule']



def _check_positive_int(name: str, value: int) -> None:
    """Raise an InvalidArgumentError quoting ``value`` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f'{name} must be a positive integer, got {value!r}')


class SpatialGatherModule(nn.Module):
    """Soft object-region representations (the paper's f_k, Eq. 2).

    Each region representation is the mean of the pixel features weighted by the spatial softmax of
    that region's (first-stage) logit map.

    Args:
        scale: Temperature multiplying the logits before the spatial softmax (the authors'
            ``SpatialGather_Module.scale``; 1 in every released model).
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise InvalidArgumentError(f'gather scale must be a positive number, got {scale!r}')
        self.scale = float(scale)

    def forward(self, feats: Tensor, probs: Tensor) -> Tensor:
        """Gather region representations.

        Args:
            feats: Pixel features, shape (N, C, H, W).
            probs: Soft object-region logits, shape (N, K, H, W), same H and W as ``feats``.

        Returns:
            Region representations, shape (N, C, K, 1).
        """
        if feats.shape[0] != probs.shape[0] or feats.shape[2:] != probs.shape[2:]:
            raise InvalidArgumentError('the soft object regions must have the batch size and spatial size of '
                                       f'the features: got regions {tuple(probs.shape)} for features '
                                       f'{tuple(feats.shape)}')
        weights = F.softmax(self.scale * probs.flatten(2), dim=2)  # (N, K, HW), sums to 1 over HW
        # (N, C, HW) @ (N, HW, K) -> (N, C, K): one weighted mean per region.
        regions = torch.bmm(feats.flatten(2), weights.transpose(1, 2))
        return regions.unsqueeze(3)


class ObjectAttentionBlock(nn.Module):
    """Pixel-region attention followed by the context/feature fusion (the paper's Eq. 3-5).

    Module names follow mmseg's ``ObjectAttentionBlock`` (authors' names in brackets):
    ``query_project`` [f_pixel], ``key_project`` [f_object], ``value_project`` [f_down],
    ``out_project`` [f_up] and ``bottleneck`` [conv_bn_dropout without the dropout].

    Args:
        in_channels: Channels of the pixel features and of the region representations.
        channels: Query/key channels (the authors' ``key_channels``).
        scale: Queries are computed on the pixel features max-pooled by this factor and the object
            context is upsampled back to the input size (1: no pooling).
        conv_cfg: Conv layer config.
        norm_cfg: Norm layer config.
        act_cfg: Activation config.
        value_channels: Value channels; ``None`` means ``channels`` as in the authors' code.
        align_corners: ``align_corners`` of the bilinear upsampling used when ``scale > 1``.

    The positional arguments are those of mmseg's ``ObjectAttentionBlock``.
    """

    def __init__(self,
                 in_channels: int,
                 channels: int,
                 scale: int = 1,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = None,
                 act_cfg: OptConfigType = dict(type='ReLU'),
                 *,
                 value_channels: Optional[int] = None,
                 align_corners: bool = False) -> None:
        super().__init__()
        value_channels = channels if value_channels is None else value_channels
        for name, value in (('in_channels', in_channels), ('ocr channels', channels),
                            ('scale', scale), ('value_channels', value_channels)):
            _check_positive_int(name, value)
        self.in_channels = in_channels
        self.channels = channels
        self.value_channels = value_channels
        self.scale = scale
        self.align_corners = align_corners

        def conv1x1(in_ch: int, out_ch: int) -> ConvModule:
            return ConvModule(in_ch, out_ch, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)

        # Built in mmseg's order so that parameters enumerate identically.
        self.key_project = nn.Sequential(conv1x1(in_channels, channels), conv1x1(channels, channels))
        self.query_project = nn.Sequential(conv1x1(in_channels, channels), conv1x1(channels, channels))
        self.value_project = conv1x1(in_channels, value_channels)
        self.out_project = conv1x1(value_channels, in_channels)
        self.bottleneck = conv1x1(in_channels * 2, in_channels)
        self.query_downsample = nn.MaxPool2d(kernel_size=scale) if scale > 1 else None

    def _out_projection_is_affine(self) -> bool:
        """Whether ``out_project`` before its activation is a fixed affine map (inference)."""
        out_project = self.out_project
        if self.training or tuple(out_project.order) != ('conv', 'norm', 'act'):
            return False
        return not (out_project.with_norm and out_project.norm.training)

    def object_context(self, feats: Tensor, regions: Tensor) -> Tensor:
        """The object-contextual representation y of every pixel (before the fusion conv).

        Args:
            feats: Pixel features, shape (N, C, H, W).
            regions: Region representations, shape (N, C, K, 1).

        Returns:
            Object context, shape (N, C, H, W).
        """
        height, width = feats.shape[2:]
        query_input = feats if self.query_downsample is None else self.query_downsample(feats)
        query = self.query_project(query_input)  # (N, Ck, h, w)
        key = self.key_project(regions)  # (N, Ck, K, 1)
        value = self.value_project(regions)  # (N, Cv, K, 1)
        project_regions = self._out_projection_is_affine()
        if project_regions:
            # out_project's conv and (eval-mode) BN are affine and every attention row sums to 1,
            # so they commute with the attention: apply them to the K region values instead of
            # the h*w pixels (exact up to rounding, h*w/K times fewer multiply-adds).
            value = self.out_project.conv(value)
            if self.out_project.with_norm:
                value = self.out_project.norm(value)
        batch_size, _, query_height, query_width = query.shape
        # softmax(q k^T / sqrt(Ck)) v over the K regions; SDPA's default scale is 1 / sqrt(Ck).
        context = F.scaled_dot_product_attention(
            query.flatten(2).transpose(1, 2),
            key.flatten(2).transpose(1, 2),
            value.flatten(2).transpose(1, 2))  # (N, h*w, C or Cv)
        context = context.transpose(1, 2).reshape(batch_size, value.shape[1], query_height, query_width)
        if not project_regions:
            context = self.out_project(context)
        elif self.out_project.with_activation:
            context = self.out_project.activate(context)
        if (query_height, query_width) != (height, width):
            context = F.interpolate(context, size=(height, width), mode='bilinear',
                                    align_corners=self.align_corners)
        return context

    def forward(self, feats: Tensor, regions: Tensor) -> Tensor:
        """Each pixel's features fused with its object context, (N, C, H, W); inputs as :meth:`object_context`."""
        context = self.object_context(feats, regions)
        return self.bottleneck(torch.cat([context, feats], dim=1))


@MODELS.register_module()
class OCRHead(BaseCascadeDecodeHead):
    """OCR head, a drop-in replacement of mmseg's ``OCRHead``.

    Args:
        ocr_channels: Query/key channels of the pixel-region attention (the authors'
            ``key_channels``, 256 in every released model).
        scale: Pooling factor of the attention queries (the authors' ``SpatialOCR_Module.scale``);
            the object context is upsampled back with ``align_corners``. mmseg's head documents
            ``scale`` as the spatial-gather temperature too but fails for any ``scale > 1``; here
            the temperature is the separate ``gather_scale``.
        gather_scale: Temperature of the spatial-gather softmax (the authors'
            ``SpatialGather_Module.scale``).
        value_channels: Value channels of the attention; ``None`` means ``ocr_channels``.
        **kwargs: ``BaseDecodeHead`` arguments (``in_channels``, ``channels`` = the authors'
            ``mid_channels``, ``num_classes``, ``dropout_ratio``, ``align_corners``, ...).
    """

    def __init__(self,
                 ocr_channels: int,
                 scale: int = 1,
                 gather_scale: float = 1.0,
                 value_channels: Optional[int] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        _check_positive_int('ocr_channels', ocr_channels)
        _check_positive_int('scale', scale)
        self.ocr_channels = ocr_channels
        self.scale = scale
        self.gather_scale = gather_scale
        self.object_context_block = ObjectAttentionBlock(
            self.channels,
            ocr_channels,
            scale=scale,
            value_channels=value_channels,
            align_corners=self.align_corners,
            conv_cfg=self.conv_cfg,
            norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg)
        self.spatial_gather_module = SpatialGatherModule(gather_scale)
        self.bottleneck = ConvModule(
            self.in_channels,
            self.channels,
            3,
            padding=1,
            conv_cfg=self.conv_cfg,
            norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg)

    def forward(self, inputs: Union[List[Tensor], Tuple[Tensor, ...]], prev_output: Tensor) -> Tensor:
        """Segmentation logits at the feature resolution.

        Args:
            inputs: Backbone features.
            prev_output: The first stage's soft object-region logits, at the spatial size of the
                transformed features.

        Returns:
            Logits, shape (N, num_classes, H, W).
        """
        feats = self.bottleneck(self._transform_inputs(inputs))
        regions = self.spatial_gather_module(feats, prev_output)
        return self.cls_seg(self.object_context_block(feats, regions))
