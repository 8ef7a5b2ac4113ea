"""ERFNet (Romera et al., T-ITS 2018) as a drop-in replacement for mmseg's ``ERFNet``.

The blocks subclass mmseg's so that parameter names (and therefore checkpoints) are identical. What
differs from mmseg:

* ``conv_cfg``, ``norm_cfg`` and ``act_cfg`` given to the backbone reach every block (mmseg builds its
  blocks with their own defaults and ignores the backbone's).
* Batch norms use the authors' ``eps=1e-3`` unless ``norm_cfg`` sets ``eps``, which is what mmseg's
  blocks use, so mmseg checkpoints give the same outputs.
* Activations default to in-place, the downsampler skips its resize when the conv and pool outputs
  already agree, on CPU the convolutions run in channels-last layout (``channels_last``), and every
  block can fold its batch norms (:meth:`fold_bn`) for inference.
* Options for the paper's training recipe: per-stage dropout ratios, channel-wise dropout
  (``nn.Dropout2d`` as in the authors' code) and an encoder-only mode (features at 1/8) for the
  paper's first training stage.
"""
import copy
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmseg.models.backbones.erfnet import DownsamplerBlock as MMSegDownsamplerBlock
from mmseg.models.backbones.erfnet import NonBottleneck1d as MMSegNonBottleneck1d
from mmseg.models.backbones.erfnet import UpsamplerBlock as MMSegUpsamplerBlock
from mmseg.models.utils import resize
from mmseg.utils import OptConfigType, OptMultiConfig
from torch import Tensor

from mmseg_ext.errors import InvalidArgumentError
from mmseg_ext.folding import bn_scale_and_shift, fold_bn_into_conv, is_foldable_bn
from mmseg_ext.registry import MODELS

__all__ = ['ERFNet', 'ERFNetDownsamplerBlock', 'ERFNetNonBottleneck1d', 'ERFNetUpsamplerBlock',
           'AUTHORS_BN_EPS', 'DownsamplerBlock', 'NonBottleneck1d', 'UpsamplerBlock']

AUTHORS_BN_EPS = 1e-3
"""Batch-norm epsilon of the authors' code (and of mmseg's ERFNet blocks)."""

# Activation types whose constructors take ``inplace``; the same list mmcv's ConvModule applies.
_INPLACE_CAPABLE_ACTIVATIONS = ('ReLU', 'LeakyReLU', 'ReLU6', 'ELU', 'SiLU', 'Hardswish', 'HSwish')



def _norm_cfg_with_authors_eps(norm_cfg: dict) -> dict:
    """``norm_cfg`` with ``eps`` defaulting to the authors' 1e-3."""
    cfg = copy.deepcopy(dict(norm_cfg))
    cfg.setdefault('eps', AUTHORS_BN_EPS)
    return cfg


def _inplace_act_cfg(act_cfg: dict) -> dict:
    """``act_cfg`` with ``inplace=True`` for activation types that support it, unless it is set."""
    cfg = copy.deepcopy(dict(act_cfg))
    if cfg.get('type') in _INPLACE_CAPABLE_ACTIVATIONS:
        cfg.setdefault('inplace', True)
    return cfg


class ERFNetDownsamplerBlock(MMSegDownsamplerBlock):
    """ERFNet downsampler: a stride-2 3x3 conv concatenated with a 2x2 max-pool, then norm and act.

    The conv produces ``out_channels - in_channels`` channels and the pool the remaining
    ``in_channels``. When a side is odd the pool output is one pixel short; like mmseg, it is then
    resized bilinearly to the conv output's size.

    After :meth:`fold_bn` the norm's conv channels live in the conv and its pool channels are applied
    as a per-channel scale and shift after pooling (``pool_scale``, ``pool_shift``).

    Args:
        in_channels: Number of input channels.
        out_channels: Number of output channels; must exceed ``in_channels``.
        conv_cfg: Config of the conv layer (None: ``nn.Conv2d``).
        norm_cfg: Config of the norm layer over all ``out_channels``.
        act_cfg: Config of the activation layer.
        init_cfg: Initialization config dict.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: dict = dict(type='BN', eps=AUTHORS_BN_EPS),
                 act_cfg: dict = dict(type='ReLU'),
                 init_cfg: OptMultiConfig = None) -> None:
        if out_channels <= in_channels:
            raise InvalidArgumentError(f'a downsampler needs out_channels > in_channels (the conv adds '
                                       f'out_channels - in_channels channels to the pooled input), got '
                                       f'in_channels={in_channels}, out_channels={out_channels}')
        super().__init__(in_channels, out_channels, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         act_cfg=act_cfg, init_cfg=init_cfg)
        # Set by fold_bn: the pool channels' share of the folded norm.
        self.register_buffer('pool_scale', None)
        self.register_buffer('pool_shift', None)

    @property
    def bn_folded(self) -> bool:
        """Whether :meth:`fold_bn` has replaced the norm layer."""
        return self.pool_scale is not None

    def forward(self, x: Tensor) -> Tensor:
        conv_out = self.conv(x)
        pool_out = self.pool(x)
        if pool_out.shape[2:] != conv_out.shape[2:]:
            pool_out = resize(pool_out, size=conv_out.shape[2:], mode='bilinear', align_corners=False)
        if self.bn_folded:
            pool_out = torch.addcmul(self.pool_shift, pool_out, self.pool_scale)
            out = torch.cat([conv_out, pool_out], 1)
        else:
            out = self.bn(torch.cat([conv_out, pool_out], 1))
        return self.act(out)

    @torch.no_grad()
    def fold_bn(self) -> None:
        """Fold the norm into the conv (conv channels) and a scale/shift after pooling (pool channels).

        Does nothing if already folded or if the norm is not a batch norm with running statistics.
        """
        if self.bn_folded or not is_foldable_bn(self.bn):
            return
        conv_channels = self.conv.out_channels
        scale, shift = bn_scale_and_shift(self.bn)
        dtype = self.conv.weight.dtype
        fold_bn_into_conv(self.conv, self.bn, channels=slice(0, conv_channels))
        device = self.conv.weight.device
        self.pool_scale = scale[conv_channels:].to(device, dtype).view(1, -1, 1, 1)
        self.pool_shift = shift[conv_channels:].to(device, dtype).view(1, -1, 1, 1)
        self.bn = nn.Identity()


class ERFNetNonBottleneck1d(MMSegNonBottleneck1d):
    """ERFNet's residual block of factorised (3x1 then 1x3) convolutions.

    Layout of ``convs_layers`` per conv layer (as in mmseg): 3x1 conv, act, 1x3 conv, norm, then act
    for the first layer or dropout for the others; the block returns ``act(output + input)``.

    Args:
        channels: Number of input and output channels.
        drop_rate: Dropout probability after the last norm.
        dilation: Dilation of the convolutions after the first layer.
        num_conv_layer: Number of (3x1, 1x3) convolution pairs.
        conv_cfg: Config of the conv layers (None: ``nn.Conv2d``).
        norm_cfg: Config of the norm layers.
        act_cfg: Config of the activation layers.
        init_cfg: Initialization config dict.
        channel_dropout: Use ``nn.Dropout2d`` (whole channels, the authors' choice) instead of
            mmseg's element-wise ``nn.Dropout``.
    """

    def __init__(self,
                 channels: int,
                 drop_rate: float = 0.,
                 dilation: int = 1,
                 num_conv_layer: int = 2,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: dict = dict(type='BN', eps=AUTHORS_BN_EPS),
                 act_cfg: dict = dict(type='ReLU'),
                 init_cfg: OptMultiConfig = None,
                 *,
                 channel_dropout: bool = False) -> None:
        if not 0 <= drop_rate < 1:
            raise InvalidArgumentError(f'drop_rate must be in [0, 1), got {drop_rate!r}')
        if dilation < 1:
            raise InvalidArgumentError(f'dilation must be >= 1, got {dilation!r}')
        if num_conv_layer < 1:
            raise InvalidArgumentError(f'num_conv_layer must be >= 1, got {num_conv_layer!r}')
        super().__init__(channels, drop_rate=drop_rate, dilation=dilation,
                         num_conv_layer=num_conv_layer, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         act_cfg=act_cfg, init_cfg=init_cfg)
        if channel_dropout:
            for index, layer in enumerate(self.convs_layers):
                if isinstance(layer, nn.Dropout):
                    self.convs_layers[index] = nn.Dropout2d(p=layer.p)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for layer in self.convs_layers:
            out = layer(out)
        if out is x:  # every layer was an identity: do not add in place into the input
            out = out + x
        else:
            out += x
        return self.act(out)

    @torch.no_grad()
    def fold_bn(self) -> None:
        """Fold every batch norm into the convolution before it (norms become ``nn.Identity``)."""
        layers = self.convs_layers
        for index in range(1, len(layers)):
            if is_foldable_bn(layers[index]) and isinstance(layers[index - 1], nn.Conv2d):
                fold_bn_into_conv(layers[index - 1], layers[index])
                layers[index] = nn.Identity()


class ERFNetUpsamplerBlock(MMSegUpsamplerBlock):
    """ERFNet upsampler: 3x3 stride-2 transposed conv (doubles the size), norm, act.

    The constructor is mmseg's, unchanged (its BN eps default is ``AUTHORS_BN_EPS``).

    Args:
        in_channels: Number of input channels.
        out_channels: Number of output channels.
        conv_cfg: Accepted for interface compatibility; the transposed conv is always
            ``nn.ConvTranspose2d``.
        norm_cfg: Config of the norm layer.
        act_cfg: Config of the activation layer.
        init_cfg: Initialization config dict.
    """

    @torch.no_grad()
    def fold_bn(self) -> None:
        """Fold the batch norm into the transposed conv (the norm becomes ``nn.Identity``)."""
        if is_foldable_bn(self.bn):
            fold_bn_into_conv(self.conv, self.bn)
            self.bn = nn.Identity()


def plugin_block_from_mmseg(block: Union[MMSegDownsamplerBlock, MMSegUpsamplerBlock]) -> nn.Module:
    """The plugin's block (which folds its own norm) with mmseg ``block``'s configuration, weights, statistics,
    device and mode; :func:`mmseg_ext.fuse_conv_bn` puts it in place of mmseg's."""
    plugin_type = {MMSegDownsamplerBlock: ERFNetDownsamplerBlock,
                   MMSegUpsamplerBlock: ERFNetUpsamplerBlock}[type(block)]
    plugin = plugin_type(block.conv.in_channels, block.bn.num_features, conv_cfg=block.conv_cfg,
                         norm_cfg=block.norm_cfg, act_cfg=block.act_cfg)
    plugin.load_state_dict(block.state_dict())
    return plugin.to(block.conv.weight.device).train(block.training)


#: mmseg's names of the blocks (``mmseg.models.backbones.erfnet``), with mmseg's constructor signatures.
DownsamplerBlock = ERFNetDownsamplerBlock
NonBottleneck1d = ERFNetNonBottleneck1d
UpsamplerBlock = ERFNetUpsamplerBlock


@MODELS.register_module()
class ERFNet(BaseModule):
    """ERFNet backbone, a drop-in replacement for ``mmseg.models.backbones.ERFNet``.

    `ERFNet: Efficient Residual Factorized ConvNet for Real-time Semantic Segmentation
    <https://ieeexplore.ieee.org/document/8063438>`_ (Romera et al., T-ITS 2018).

    The encoder is a downsampler to ``enc_downsample_channels[0]``, then per stage ``i`` a downsampler
    to ``enc_downsample_channels[i + 1]`` followed by ``enc_stage_non_bottlenecks[i]`` residual
    blocks; the last stage's blocks cycle through ``enc_non_bottleneck_dilations``. The decoder is,
    per stage, an upsampler to ``dec_non_bottleneck_channels[i]`` followed by
    ``dec_stages_non_bottleneck[i]`` residual blocks. With the defaults the output has 16 channels
    at 1/2 of the input size (1/8 and 128 channels with ``encoder_only``). Constructor arguments,
    defaults and parameter names are mmseg's; the keyword-only ones are additions.

    Args:
        in_channels: Number of input image channels.
        enc_downsample_channels: Output channels of each encoder downsampler.
        enc_stage_non_bottlenecks: Number of residual blocks after each encoder downsampler except
            the first; the last must be a multiple of ``len(enc_non_bottleneck_dilations)``.
        enc_non_bottleneck_dilations: Dilations cycled through by the last encoder stage.
        enc_non_bottleneck_channels: Channels of each encoder stage's residual blocks; must equal
            ``enc_downsample_channels[1:]`` (the downsamplers determine them; mmseg ignores this).
        dec_upsample_channels: Output channels of each decoder upsampler; must equal
            ``dec_non_bottleneck_channels`` (mmseg ignores this argument too).
        dec_stages_non_bottleneck: Number of residual blocks after each decoder upsampler.
        dec_non_bottleneck_channels: Channels of each decoder stage.
        dropout_ratio: Dropout probability in the encoder's residual blocks: one value for all
            stages (mmseg) or one per encoder stage (the paper uses ``(0.03, 0.3)``).
        conv_cfg: Config of the convolutions (None: ``nn.Conv2d``).
        norm_cfg: Config of every norm layer. ``eps`` defaults to the authors' 1e-3 when not given.
        act_cfg: Config of every activation; ReLU-like types default to ``inplace=True``.
        init_cfg: Initialization config dict.
        channel_dropout: Drop whole channels (``nn.Dropout2d``, the authors' code) instead of
            elements (``nn.Dropout``, mmseg).
        encoder_only: Build only the encoder and return its 1/8-resolution features, for the
            paper's first training stage; the full network loads these weights unchanged.
        channels_last: Memory layout of the computation (results agree up to float rounding).
            None: channels-last (NHWC) on CPU, where oneDNN's convolutions run faster in it, with
            the features returned in the input's layout; True: channels-last on any device, and the
            features are returned channels-last so that the head runs in it too (the fastest
            inference path with :func:`mmseg_ext.fuse_conv_bn`); False: the input's layout
            throughout, as mmseg.

    Raises:
        InvalidArgumentError: If the channel, stage or dilation arguments are inconsistent.
    """

    def __init__(self,
                 in_channels: int = 3,
                 enc_downsample_channels: Sequence[int] = (16, 64, 128),
                 enc_stage_non_bottlenecks: Sequence[int] = (5, 8),
                 enc_non_bottleneck_dilations: Sequence[int] = (2, 4, 8, 16),
                 enc_non_bottleneck_channels: Sequence[int] = (64, 128),
                 dec_upsample_channels: Sequence[int] = (64, 16),
                 dec_stages_non_bottleneck: Sequence[int] = (2, 2),
                 dec_non_bottleneck_channels: Sequence[int] = (64, 16),
                 dropout_ratio: Union[float, Sequence[float]] = 0.1,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 act_cfg: dict = dict(type='ReLU'),
                 init_cfg: OptMultiConfig = None,
                 *,
                 channel_dropout: bool = False,
                 encoder_only: bool = False,
                 channels_last: Optional[bool] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        enc_downsample_channels = tuple(enc_downsample_channels)
        enc_stage_non_bottlenecks = tuple(enc_stage_non_bottlenecks)
        enc_non_bottleneck_dilations = tuple(enc_non_bottleneck_dilations)
        enc_non_bottleneck_channels = tuple(enc_non_bottleneck_channels)
        dec_upsample_channels = tuple(dec_upsample_channels)
        dec_stages_non_bottleneck = tuple(dec_stages_non_bottleneck)
        dec_non_bottleneck_channels = tuple(dec_non_bottleneck_channels)
        stage_dropout_ratios = self._check_arguments(
            in_channels, enc_downsample_channels, enc_stage_non_bottlenecks,
            enc_non_bottleneck_dilations, enc_non_bottleneck_channels, dec_upsample_channels,
            dec_stages_non_bottleneck, dec_non_bottleneck_channels, dropout_ratio)

        self.in_channels = in_channels
        self.enc_downsample_channels = enc_downsample_channels
        self.enc_stage_non_bottlenecks = enc_stage_non_bottlenecks
        self.enc_non_bottleneck_dilations = enc_non_bottleneck_dilations
        self.enc_non_bottleneck_channels = enc_non_bottleneck_channels
        self.dec_upsample_channels = dec_upsample_channels
        self.dec_stages_non_bottleneck = dec_stages_non_bottleneck
        self.dec_non_bottleneck_channels = dec_non_bottleneck_channels
        self.dropout_ratio = dropout_ratio
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        self.channel_dropout = channel_dropout
        self.encoder_only = encoder_only
        self.channels_last = channels_last

        layer_cfgs = dict(conv_cfg=conv_cfg, norm_cfg=_norm_cfg_with_authors_eps(norm_cfg),
                          act_cfg=_inplace_act_cfg(act_cfg))
        self.encoder = nn.ModuleList()
        self.encoder.append(ERFNetDownsamplerBlock(in_channels, enc_downsample_channels[0], **layer_cfgs))
        last_stage = len(enc_stage_non_bottlenecks) - 1
        for stage, num_blocks in enumerate(enc_stage_non_bottlenecks):
            channels = enc_downsample_channels[stage + 1]
            self.encoder.append(
                ERFNetDownsamplerBlock(enc_downsample_channels[stage], channels, **layer_cfgs))
            dilations = enc_non_bottleneck_dilations if stage == last_stage else (1, )
            for block in range(num_blocks):
                self.encoder.append(
                    ERFNetNonBottleneck1d(channels, drop_rate=stage_dropout_ratios[stage],
                                          dilation=dilations[block % len(dilations)],
                                          channel_dropout=channel_dropout, **layer_cfgs))

        self.decoder = nn.ModuleList()
        if not encoder_only:
            previous_channels = enc_downsample_channels[-1]
            for channels, num_blocks in zip(dec_non_bottleneck_channels, dec_stages_non_bottleneck):
                self.decoder.append(ERFNetUpsamplerBlock(previous_channels, channels, **layer_cfgs))
                for _ in range(num_blocks):
                    self.decoder.append(
                        ERFNetNonBottleneck1d(channels, channel_dropout=channel_dropout, **layer_cfgs))
                previous_channels = channels

    @staticmethod
    def _check_arguments(in_channels: int, enc_downsample_channels: Tuple[int, ...],
                         enc_stage_non_bottlenecks: Tuple[int, ...],
                         enc_non_bottleneck_dilations: Tuple[int, ...],
                         enc_non_bottleneck_channels: Tuple[int, ...],
                         dec_upsample_channels: Tuple[int, ...],
                         dec_stages_non_bottleneck: Tuple[int, ...],
                         dec_non_bottleneck_channels: Tuple[int, ...],
                         dropout_ratio: Union[float, Sequence[float]]) -> Tuple[float, ...]:
        """Validate the architecture arguments; return one dropout ratio per encoder stage."""
        num_stages = len(enc_stage_non_bottlenecks)
        if len(enc_downsample_channels) != num_stages + 1:
            raise InvalidArgumentError(
                f'enc_downsample_channels={enc_downsample_channels} needs one entry more than '
                f'enc_stage_non_bottlenecks={enc_stage_non_bottlenecks} (the initial downsampler)')
        if enc_non_bottleneck_channels != enc_downsample_channels[1:]:
            raise InvalidArgumentError(
                f'enc_non_bottleneck_channels={enc_non_bottleneck_channels} must equal '
                f'enc_downsample_channels[1:]={enc_downsample_channels[1:]}: each stage keeps the '
                'channels of its downsampler')
        if not enc_non_bottleneck_dilations or any(d < 1 for d in enc_non_bottleneck_dilations):
            raise InvalidArgumentError('enc_non_bottleneck_dilations must be a non-empty sequence of '
                                       f'positive ints, got {enc_non_bottleneck_dilations}')
        if num_stages == 0 or enc_stage_non_bottlenecks[-1] % len(enc_non_bottleneck_dilations):
            raise InvalidArgumentError(
                f'enc_stage_non_bottlenecks={enc_stage_non_bottlenecks} must be non-empty and its '
                f'last entry a multiple of len(enc_non_bottleneck_dilations)='
                f'{len(enc_non_bottleneck_dilations)}')
        if len(dec_upsample_channels) != num_stages:
            raise InvalidArgumentError(
                f'dec_upsample_channels={dec_upsample_channels} must have one upsampler per encoder '
                f'stage ({num_stages}, from enc_stage_non_bottlenecks={enc_stage_non_bottlenecks})')
        if not len(dec_stages_non_bottleneck) == len(dec_non_bottleneck_channels) == num_stages:
            raise InvalidArgumentError(
                f'dec_stages_non_bottleneck={dec_stages_non_bottleneck} and '
                f'dec_non_bottleneck_channels={dec_non_bottleneck_channels} must have one entry per '
                f'decoder stage ({num_stages})')
        if dec_upsample_channels != dec_non_bottleneck_channels:
            raise InvalidArgumentError(
                f'dec_upsample_channels={dec_upsample_channels} must equal '
                f'dec_non_bottleneck_channels={dec_non_bottleneck_channels}: each decoder stage keeps '
                'the channels of its upsampler')
        all_channels = (in_channels, ) + enc_downsample_channels + dec_non_bottleneck_channels
        if any(int(c) != c or c < 1 for c in all_channels):
            raise InvalidArgumentError(f'channel counts must be positive ints, got in_channels={in_channels}, '
                                       f'enc_downsample_channels={enc_downsample_channels}, '
                                       f'dec_non_bottleneck_channels={dec_non_bottleneck_channels}')
        if any(n < 0 for n in enc_stage_non_bottlenecks + dec_stages_non_bottleneck):
            raise InvalidArgumentError('block counts must be >= 0, got '
                                       f'enc_stage_non_bottlenecks={enc_stage_non_bottlenecks}, '
                                       f'dec_stages_non_bottleneck={dec_stages_non_bottleneck}')
        if isinstance(dropout_ratio, (int, float)):
            ratios = (float(dropout_ratio), ) * num_stages
        else:
            ratios = tuple(float(r) for r in dropout_ratio)
            if len(ratios) != num_stages:
                raise InvalidArgumentError(f'dropout_ratio={tuple(dropout_ratio)} must be one float or one per '
                                           f'encoder stage ({num_stages})')
        if any(not 0 <= r < 1 for r in ratios):
            raise InvalidArgumentError(f'dropout_ratio must be in [0, 1), got {dropout_ratio!r}')
        return ratios

    def forward(self, x: Tensor) -> List[Tensor]:
        """Features of ``x`` (N, C, H, W): a one-element list, 1/2 resolution (1/8 encoder-only)."""
        if self.channels_last is None:
            compute_channels_last = x.device.type == 'cpu'
            return_input_layout = True
        else:
            compute_channels_last = self.channels_last
            return_input_layout = not self.channels_last
        input_is_channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous()
        out = x.contiguous(memory_format=torch.channels_last) if compute_channels_last else x
        for block in self.encoder:
            out = block(out)
        for block in self.decoder:
            out = block(out)
        if return_input_layout and compute_channels_last and not input_is_channels_last:
            out = out.contiguous()
        return [out]

    def fold_bn(self) -> None:
        """Fold every batch norm into its convolution for inference (see :func:`mmseg_ext.fuse_conv_bn`).

        Uses the running statistics, so call it on a model in eval mode that will not be trained.
        """
        for block in list(self.encoder) + list(self.decoder):
            block.fold_bn()
