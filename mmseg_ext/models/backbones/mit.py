"""Mix Transformer (MiT), the SegFormer encoder, with fused scaled-dot-product attention.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
NeurIPS 2021. This is a drop-in replacement for mmseg's ``MixVisionTransformer``: same constructor
arguments and defaults, same parameter names (so every mmseg SegFormer checkpoint loads strictly) and
the same maths. It is faster and leaner because

* attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (no materialised
  attention matrix, nor the head-averaged weights ``nn.MultiheadAttention`` computes by default),
  with q and the spatially reduced k/v projected straight from mmseg's stacked ``in_proj_weight``
  (k and v in one matmul, q, k and v in one where there is no reduction); on CPU both passes are
  PyTorch's fused flash-attention kernels, which never page in the matrices of hundreds of MiB that
  mmseg's attention allocates at 1024x1024; in training on CPU the queries are cut into blocks
  stacked on the batch axis where batch x heads would leave threads idle in that kernel's backward
  (:func:`cpu_backward_query_splits`);
* tokens stay in one ``[B, H*W, C]`` buffer, which the convolutions (Mix-FFN's 1x1 and 3x3 depth-wise
  ones, the spatial reduction) read as a channels-last ``[B, C, H, W]`` view and whose layout their
  outputs keep, so the ``nlc_to_nchw``/``nchw_to_nlc`` copies around every convolution disappear.
"""
import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks.drop import build_dropout
from mmengine.model import BaseModule, ModuleList, Sequential
from mmengine.model.weight_init import constant_init, normal_init, trunc_normal_init, update_init_info
from torch import Tensor, nn

from mmseg_ext.checkpoint.mit_pretrained import load_mit_pretrained
from mmseg_ext.errors import InvalidArgumentError
from mmseg_ext.mit_arch import MIT_ARCH_SETTINGS
from mmseg_ext.registry import MODELS

__all__ = ['MixVisionTransformer', 'cpu_backward_query_splits', 'EfficientSelfAttention',
           'MixFFN', 'MixTransformerBlock', 'EfficientMultiheadAttention', 'TransformerEncoderLayer']

# mmseg's constructor defaults, used when no ``arch`` is given.
_MMSEG_DEFAULTS: Dict[str, Union[int, List[int]]] = dict(embed_dims=64, num_layers=[3, 4, 6, 3],
                                                          num_heads=[1, 2, 4, 8])


def tokens_to_map(tokens: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
    """``[B, H*W, C]`` tokens as a ``[B, C, H, W]`` map in channels-last layout (a view if they are contiguous)."""
    batch, _, channels = tokens.shape
    return tokens.reshape(batch, hw_shape[0], hw_shape[1], channels).permute(0, 3, 1, 2)


def map_to_tokens(feature_map: Tensor) -> Tensor:
    """``[B, C, H, W]`` to ``[B, H*W, C]``; free for a channels-last map, one copy otherwise."""
    batch, channels = feature_map.shape[:2]
    return feature_map.permute(0, 2, 3, 1).reshape(batch, -1, channels)


#: The query length from which PyTorch's CPU flash attention uses its largest (256-row) query blocks.
_CPU_FLASH_LARGE_BLOCK_QUERIES = 768


def cpu_backward_query_splits(batch_heads: int, num_queries: int, num_threads: int) -> int:
    """Into how many blocks to cut the queries so that PyTorch's CPU flash-attention backward uses every thread.

    That backward parallelises over batch x heads only (it accumulates the key and value gradients per
    head), so MiT's first stage, one head at batch 1, runs on one thread. Queries are independent given
    the keys and values, so cutting them into ``splits`` blocks that each attend to all keys, stacked on
    the batch axis, computes the same outputs; autograd sums the blocks' key and value gradients. The
    blocks keep at least 768 queries so the kernel keeps its large tiles.

    Returns:
        The smallest count that makes ``batch_heads * splits`` a multiple of ``num_threads``, reduced to
        the largest count below it that divides ``num_queries`` with large enough blocks (1: no split).
    """
    wanted = num_threads // math.gcd(batch_heads, num_threads)
    for splits in range(wanted, 1, -1):
        if num_queries % splits == 0 and num_queries // splits >= _CPU_FLASH_LARGE_BLOCK_QUERIES:
            return splits
    return 1


class AttentionProjections(nn.Module):
    """The projection weights of ``nn.MultiheadAttention`` under its parameter names.

    ``in_proj_weight`` stacks the q, k and v projections (``[3C, C]``), ``in_proj_bias`` their biases
    and ``out_proj`` is the output projection; initialised as ``nn.MultiheadAttention`` does. The
    attention itself is computed by :class:`EfficientSelfAttention`.
    """

    def __init__(self, embed_dims: int, bias: bool = True) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dims, embed_dims))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dims))
        else:
            self.register_parameter('in_proj_bias', None)
        self.out_proj = nn.Linear(embed_dims, embed_dims, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform stacked projection and zero biases, as ``nn.MultiheadAttention``."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def project(self, x: Tensor, start: int, stop: int) -> Tensor:
        """``x`` through rows ``[start*C, stop*C)`` of the stacked projection (0: q, 1: k, 2: v)."""
        rows = slice(start * self.embed_dims, stop * self.embed_dims)
        bias = None if self.in_proj_bias is None else self.in_proj_bias[rows]
        return F.linear(x, self.in_proj_weight[rows], bias)


class EfficientSelfAttention(BaseModule):
    """SegFormer's efficient self-attention: multi-head attention whose keys and values come from a
    feature map reduced ``sr_ratio`` times per side by a strided convolution and a norm.

    Args:
        embed_dims: Channels C of the tokens.
        num_heads: Attention heads; must divide ``embed_dims``.
        attn_drop: Dropout probability on the attention weights (training only).
        proj_drop: Dropout probability after the output projection.
        dropout_layer: Config of the layer applied to the branch before the residual sum (DropPath).
        init_cfg: mmengine init config.
        batch_first: Must be True: tokens are ``[B, N, C]``. Accepted because mmseg's
            ``EfficientMultiheadAttention`` (whose positional signature this is) takes it.
        qkv_bias: Whether the q/k/v and output projections have biases (as mmseg's ``qkv_bias``).
        norm_cfg: Norm after the spatial reduction.
        sr_ratio: Spatial reduction ratio; 1 means keys and values come from all tokens.
    """

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0., proj_drop: float = 0.,
                 dropout_layer: Optional[dict] = None, init_cfg: Optional[dict] = None, batch_first: bool = True,
                 qkv_bias: bool = False, norm_cfg: dict = dict(type='LN'), sr_ratio: int = 1) -> None:
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads:
            raise InvalidArgumentError(f'embed_dims ({embed_dims}) must be a multiple of num_heads ({num_heads})')
        if batch_first is not True:
            raise InvalidArgumentError(f'batch_first={batch_first!r} is not supported: the attention takes '
                                       'batch-first [B, N, C] tokens, as mmseg\'s MixVisionTransformer gives it')
        self.batch_first = batch_first
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.attn = AttentionProjections(embed_dims, bias=qkv_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dropout_layer = build_dropout(dropout_layer) if dropout_layer else nn.Identity()
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = build_norm_layer(norm_cfg, embed_dims)[1]

    def forward(self, x: Tensor, hw_shape: Tuple[int, int], identity: Optional[Tensor] = None) -> Tensor:
        """Attend from the tokens ``x`` (``[B, H*W, C]``, contiguous) and add the result to ``identity``."""
        batch, num_queries, channels = x.shape
        head_dims = channels // self.num_heads
        if self.sr_ratio > 1:
            query = self.attn.project(x, 0, 1)
            reduced = self.norm(map_to_tokens(self.sr(tokens_to_map(x, hw_shape))))
            key_value = self.attn.project(reduced, 1, 3)
        else:
            query, key_value = self.attn.project(x, 0, 3).split([channels, 2 * channels], dim=-1)
        num_keys = key_value.shape[1]
        splits = 1
        if x.device.type == 'cpu' and torch.is_grad_enabled() and (query.requires_grad or key_value.requires_grad):
            splits = cpu_backward_query_splits(batch * self.num_heads, num_queries, torch.get_num_threads())
        # [B, N, C] -> [B*splits, heads, N/splits, C/heads] as strided views; the kernel reads them in
        # place. (split/unbind rather than indexing: their backward assembles the gradient in one pass.)
        query = query.view(batch * splits, num_queries // splits, self.num_heads, head_dims).transpose(1, 2)
        key, value = (part.transpose(1, 2)
                      for part in key_value.view(batch, num_keys, 2, self.num_heads, head_dims).unbind(2))
        if splits > 1:
            # Every query block attends to all keys: repeat k and v (small: the reduced map) per block.
            key, value = (part.repeat_interleave(splits, dim=0) for part in (key, value))
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=self.attn_drop if self.training else 0.)
        out = self.attn.out_proj(out.transpose(1, 2).reshape(batch, num_queries, channels))
        # In place: the branch output is a fresh tensor no backward needs (saves an allocation).
        return self.dropout_layer(self.proj_drop(out)).add_(x if identity is None else identity)


class MixFFN(BaseModule):
    """Mix-FFN: 1x1 conv, 3x3 depth-wise conv (positional information), activation, 1x1 conv.

    Parameters keep mmseg's names (``layers.0``, ``layers.1``, ``layers.4`` are 1x1, 3x3 depth-wise and
    1x1 convolutions); they run on a channels-last view of the tokens.

    Args:
        embed_dims: Channels C of the tokens.
        feedforward_channels: Hidden channels.
        act_cfg: Activation config (None: the default GELU).
        ffn_drop: Dropout probability after the activation and after the last projection.
        dropout_layer: Config of the layer applied to the branch before the residual sum (DropPath).
        init_cfg: mmengine init config.
    """

    def __init__(self, embed_dims: int, feedforward_channels: int, act_cfg: Optional[dict] = dict(type='GELU'),
                 ffn_drop: float = 0., dropout_layer: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.embed_dims = embed_dims
        self.feedforward_channels = feedforward_channels
        self.activate = build_activation_layer(act_cfg or dict(type='GELU'))
        fc1 = nn.Conv2d(embed_dims, feedforward_channels, kernel_size=1)
        pe_conv = nn.Conv2d(feedforward_channels, feedforward_channels, kernel_size=3, padding=1,
                            groups=feedforward_channels)
        fc2 = nn.Conv2d(feedforward_channels, embed_dims, kernel_size=1)
        drop = nn.Dropout(ffn_drop)
        self.layers = Sequential(fc1, pe_conv, self.activate, drop, fc2, drop)
        self.dropout_layer = build_dropout(dropout_layer) if dropout_layer else nn.Identity()

    def forward(self, x: Tensor, hw_shape: Tuple[int, int], identity: Optional[Tensor] = None) -> Tensor:
        """Mix-FFN of the tokens ``x`` (``[B, H*W, C]``, contiguous) added to ``identity``."""
        fc1, pe_conv, activate, drop, fc2 = (self.layers[index] for index in range(5))
        # All three convolutions run on channels-last views of the token buffer: oneDNN's 1x1
        # convolution on that layout was faster than F.linear on the tokens, in both passes.
        out = map_to_tokens(drop(fc2(drop(activate(pe_conv(fc1(tokens_to_map(x, hw_shape))))))))
        # In place: the branch output is a fresh tensor no backward needs (saves an allocation).
        return self.dropout_layer(out).add_(x if identity is None else identity)


class MixTransformerBlock(BaseModule):
    """One SegFormer encoder block: pre-norm efficient self-attention and pre-norm Mix-FFN.

    Args:
        embed_dims: Channels of the tokens.
        num_heads: Attention heads.
        feedforward_channels: Hidden channels of the Mix-FFN.
        drop_rate: Dropout after the attention and in the Mix-FFN.
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth probability of both branches.
        qkv_bias: Biases in the attention projections.
        act_cfg: Activation of the Mix-FFN.
        norm_cfg: Norm config.
        batch_first: Must be True (tokens are ``[B, N, C]``); mmseg's ``TransformerEncoderLayer`` takes it.
        sr_ratio: Spatial reduction ratio of the attention.
        with_cp: Recompute the block in the backward pass instead of storing its activations.
    """

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0., qkv_bias: bool = True,
                 act_cfg: dict = dict(type='GELU'), norm_cfg: dict = dict(type='LN'), batch_first: bool = True,
                 sr_ratio: int = 1, with_cp: bool = False) -> None:
        super().__init__()
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = EfficientSelfAttention(
            embed_dims=embed_dims, num_heads=num_heads, attn_drop=attn_drop_rate, proj_drop=drop_rate,
            dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate), batch_first=batch_first,
            qkv_bias=qkv_bias, norm_cfg=norm_cfg, sr_ratio=sr_ratio)
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = MixFFN(embed_dims=embed_dims, feedforward_channels=feedforward_channels, ffn_drop=drop_rate,
                          dropout_layer=dict(type='DropPath', drop_prob=drop_path_rate), act_cfg=act_cfg)
        self.with_cp = with_cp

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        """Tokens ``[B, H*W, C]`` in, tokens out."""

        def _inner_forward(x: Tensor) -> Tensor:
            x = self.attn(self.norm1(x), hw_shape, identity=x)
            return self.ffn(self.norm2(x), hw_shape, identity=x)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(_inner_forward, x, use_reentrant=False)
        return _inner_forward(x)


#: mmseg's names of the blocks (``mmseg.models.backbones.mit``), with mmseg's constructor signatures.
EfficientMultiheadAttention = EfficientSelfAttention
TransformerEncoderLayer = MixTransformerBlock


class OverlapPatchEmbed(BaseModule):
    """Overlapping patch embedding: a strided convolution (padding ``kernel_size // 2``) and a norm.

    Parameter names follow mmseg's ``PatchEmbed`` (``projection``, ``norm``).
    """

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int, stride: int,
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size=kernel_size, stride=stride,
                                    padding=kernel_size // 2)
        self.norm = build_norm_layer(norm_cfg or dict(type='LN', eps=1e-6), embed_dims)[1]

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """``[B, C_in, H, W]`` map in, contiguous ``[B, h*w, C]`` tokens and ``(h, w)`` out."""
        x = self.projection(x)
        hw_shape = (x.shape[2], x.shape[3])
        return self.norm(map_to_tokens(x)), hw_shape


@MODELS.register_module()
class MixVisionTransformer(BaseModule):
    """The SegFormer encoder (MiT), a drop-in for mmseg's ``MixVisionTransformer``.

    Args:
        in_channels: Input channels.
        embed_dims: Base width; stage ``i`` has ``embed_dims * num_heads[i]`` channels.
            Defaults to the ``arch`` setting, or 64 without one (mmseg's default).
        num_stages: Number of stages.
        num_layers: Blocks per stage. Defaults to the ``arch`` setting, or ``[3, 4, 6, 3]``.
        num_heads: Attention heads per stage. Defaults to the ``arch`` setting, or ``[1, 2, 4, 8]``.
        patch_sizes: Kernel size of each stage's overlapping patch embedding.
        strides: Stride of each stage's patch embedding.
        sr_ratios: Spatial reduction ratio of each stage's attention.
        out_indices: Stages whose feature maps are returned.
        mlp_ratio: Mix-FFN hidden channels per channel.
        qkv_bias: Biases in the attention projections.
        drop_rate: Dropout after attention and in the Mix-FFN.
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth, rising linearly from 0 to this over all blocks.
        act_cfg: Mix-FFN activation (None: the default GELU).
        norm_cfg: Norm config (None: the default LayerNorm with eps 1e-6).
        pretrained: Deprecated path of a pretrained encoder; use ``init_cfg``.
        init_cfg: mmengine init config. ``dict(type='Pretrained', checkpoint=...)`` accepts mmseg's,
            the official NVlabs and Hugging Face encoder layouts (detected from the keys).
        with_cp: Gradient checkpointing of every block.
        arch: A published variant, ``'b0'`` ... ``'b5'``, setting ``embed_dims``, ``num_layers`` and
            ``num_heads``; explicit arguments override it.
    """

    def __init__(self,
                 in_channels: int = 3,
                 embed_dims: Optional[int] = None,
                 num_stages: int = 4,
                 num_layers: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 patch_sizes: Sequence[int] = (7, 3, 3, 3),
                 strides: Sequence[int] = (4, 2, 2, 2),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3),
                 mlp_ratio: int = 4,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 act_cfg: Optional[dict] = dict(type='GELU'),
                 norm_cfg: Optional[dict] = dict(type='LN', eps=1e-6),
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
                 with_cp: bool = False,
                 arch: Optional[str] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if init_cfg and pretrained:
            raise InvalidArgumentError(f'init_cfg and pretrained cannot be set at the same time, got '
                                       f'init_cfg={init_cfg!r} and pretrained={pretrained!r}')
        if isinstance(pretrained, str):
            warnings.warn('DeprecationWarning: pretrained is deprecated, please use "init_cfg" instead')
            self.init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        elif pretrained is not None:
            raise TypeError(f'pretrained must be a str or None, got {type(pretrained).__name__}')

        if arch is None:
            settings = _MMSEG_DEFAULTS
        elif arch in MIT_ARCH_SETTINGS:
            settings = MIT_ARCH_SETTINGS[arch]
        else:
            raise InvalidArgumentError(f'arch={arch!r} is not a MiT variant; choose one of '
                                       f'{", ".join(repr(name) for name in MIT_ARCH_SETTINGS)} (or None)')
        embed_dims = settings['embed_dims'] if embed_dims is None else embed_dims
        num_layers = list(settings['num_layers'] if num_layers is None else num_layers)
        num_heads = list(settings['num_heads'] if num_heads is None else num_heads)
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        act_cfg = dict(type='GELU') if act_cfg is None else act_cfg
        norm_cfg = dict(type='LN', eps=1e-6) if norm_cfg is None else norm_cfg

        per_stage = dict(num_layers=num_layers, num_heads=num_heads, patch_sizes=patch_sizes, strides=strides,
                         sr_ratios=sr_ratios)
        wrong = {name: list(value) for name, value in per_stage.items() if len(value) != num_stages}
        if wrong:
            raise InvalidArgumentError(
                f'num_stages={num_stages} but these per-stage arguments have another length: {wrong}')
        if not out_indices or any(not 0 <= index < num_stages for index in out_indices):
            raise InvalidArgumentError(f'out_indices={tuple(out_indices)} must name stages in [0, {num_stages})')

        self.arch = arch
        self.embed_dims = embed_dims
        self.num_stages = num_stages
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.patch_sizes = patch_sizes
        self.strides = strides
        self.sr_ratios = sr_ratios
        self.with_cp = with_cp
        self.out_indices = out_indices

        # Stochastic depth rises linearly over all blocks.
        drop_path_rates = [rate.item() for rate in torch.linspace(0, drop_path_rate, sum(num_layers))]
        block_index = 0
        self.layers = ModuleList()
        for stage, num_blocks in enumerate(num_layers):
            stage_dims = embed_dims * num_heads[stage]
            patch_embed = OverlapPatchEmbed(in_channels, stage_dims, kernel_size=patch_sizes[stage],
                                            stride=strides[stage], norm_cfg=norm_cfg)
            blocks = ModuleList([
                MixTransformerBlock(embed_dims=stage_dims, num_heads=num_heads[stage],
                                    feedforward_channels=mlp_ratio * stage_dims, drop_rate=drop_rate,
                                    attn_drop_rate=attn_drop_rate,
                                    drop_path_rate=drop_path_rates[block_index + index], qkv_bias=qkv_bias,
                                    act_cfg=act_cfg, norm_cfg=norm_cfg, sr_ratio=sr_ratios[stage],
                                    with_cp=with_cp) for index in range(num_blocks)
            ])
            norm = build_norm_layer(norm_cfg, stage_dims)[1]
            self.layers.append(ModuleList([patch_embed, blocks, norm]))
            in_channels = stage_dims
            block_index += num_blocks

    def init_weights(self) -> None:
        """mmseg's initialisation without ``init_cfg``; otherwise ``init_cfg``, where ``Pretrained``
        entries load any published MiT layout strictly (see :func:`load_mit_pretrained`)."""
        if self.init_cfg is None:
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    trunc_normal_init(module, std=.02, bias=0.)
                elif isinstance(module, nn.LayerNorm):
                    constant_init(module, val=1.0, bias=0.)
                elif isinstance(module, nn.Conv2d):
                    fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                    fan_out //= module.groups
                    normal_init(module, mean=0, std=math.sqrt(2.0 / fan_out), bias=0)
            return
        init_cfgs = self.init_cfg if isinstance(self.init_cfg, (list, tuple)) else [self.init_cfg]
        if not all(isinstance(cfg, dict) for cfg in init_cfgs):
            # mmengine's initialize() raises TypeError here too; mmseg's MiT reaches it.
            raise TypeError(f'init_cfg must be a dict or a list of dicts, got {self.init_cfg!r}')
        pretrained_cfgs = [cfg for cfg in init_cfgs if cfg.get('type') == 'Pretrained']
        if not pretrained_cfgs:
            super().init_weights()
            return
        others = [cfg for cfg in init_cfgs if cfg.get('type') != 'Pretrained']
        if others:
            from mmengine.model import initialize
            initialize(self, others)
        for cfg in pretrained_cfgs:
            unknown = set(cfg) - {'type', 'checkpoint', 'prefix', 'map_location'}
            if unknown:
                raise InvalidArgumentError(f'unsupported keys {sorted(unknown)} in the Pretrained init_cfg {cfg}')
            extraction = load_mit_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                                             map_location=cfg.get('map_location', 'cpu'))
            from mmengine.logging import print_log
            print_log(f'{type(self).__name__}: loaded the {extraction.layout} MiT layout from '
                      f'{cfg["checkpoint"]} (ignored {len(extraction.dropped)} head key(s))', logger='current')
            if hasattr(self, '_params_init_info'):
                update_init_info(self, init_info=f'Pretrained ({extraction.layout} layout): {cfg["checkpoint"]}')
        self._is_init = True

    def forward(self, x: Tensor) -> List[Tensor]:
        """``[B, C_in, H, W]`` images in; the feature maps of ``out_indices`` (contiguous NCHW) out."""
        outs = []
        for stage, (patch_embed, blocks, norm) in enumerate(self.layers):
            x, hw_shape = patch_embed(x)
            for block in blocks:
                x = block(x, hw_shape)
            x = tokens_to_map(norm(x), hw_shape)  # channels-last view, read in place by the next embedding
            if stage in self.out_indices:
                outs.append(x.contiguous())
        return outs
