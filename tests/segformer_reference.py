"""A stand-alone re-implementation of the official NVlabs SegFormer (mix_transformer.py and
segformer_head.py of github.com/NVlabs/SegFormer) for building reference checkpoints in the tests.

Module names follow the NVlabs code so that ``state_dict()`` has its published keys
(``patch_embed{s}``, ``block{s}.{j}.attn.q/kv/proj/sr/norm``, ``mlp.fc1/dwconv.dwconv/fc2``, ``norm{s}``,
``head`` and ``decode_head.linear_c{s}.proj``, ``linear_fuse.conv/bn``, ``linear_pred``, ``conv_seg``).
Attention is the explicit ``softmax(q k^T / sqrt(d)) v``. LayerNorm eps follows NVlabs: 1e-6 in the
blocks and stage norms (``norm_layer``), PyTorch's default 1e-5 in the patch embeddings and reductions.
"""
from functools import partial
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Module()
        self.dwconv.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, bias=True, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = self.fc1(x)
        batch, tokens, channels = x.shape
        x = x.transpose(1, 2).reshape(batch, channels, height, width)
        x = self.dwconv.dwconv(x).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads)**-0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch, tokens, channels = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(batch, tokens, heads, channels // heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x_ = x.permute(0, 2, 1).reshape(batch, channels, height, width)
            x_ = self.norm(self.sr(x_).reshape(batch, channels, -1).permute(0, 2, 1))
        else:
            x_ = x
        kv = self.kv(x_).reshape(batch, -1, 2, heads, channels // heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int, norm_layer) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, sr_ratio)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x), height, width)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride,
                              padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor):
        x = self.proj(x)
        height, width = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class NVlabsMiT(nn.Module):
    """NVlabs ``MixVisionTransformer`` (with its 1000-class ImageNet ``head``)."""

    def __init__(self, embed_dims: Sequence[int] = (32, 64, 160, 256), num_heads: Sequence[int] = (1, 2, 5, 8),
                 depths: Sequence[int] = (2, 2, 2, 2), sr_ratios: Sequence[int] = (8, 4, 2, 1), mlp_ratio: int = 4,
                 num_classes: int = 1000) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        in_chans = 3
        for stage in range(4):
            patch, stride = (7, 4) if stage == 0 else (3, 2)
            setattr(self, f'patch_embed{stage + 1}', OverlapPatchEmbed(patch, stride, in_chans, embed_dims[stage]))
            setattr(self, f'block{stage + 1}', nn.ModuleList([
                Block(embed_dims[stage], num_heads[stage], mlp_ratio, sr_ratios[stage], norm_layer)
                for _ in range(depths[stage])
            ]))
            setattr(self, f'norm{stage + 1}', norm_layer(embed_dims[stage]))
            in_chans = embed_dims[stage]
        self.head = nn.Linear(embed_dims[3], num_classes)

    def forward_features(self, x: Tensor) -> List[Tensor]:
        outs = []
        batch = x.shape[0]
        for stage in range(1, 5):
            x, height, width = getattr(self, f'patch_embed{stage}')(x)
            for block in getattr(self, f'block{stage}'):
                x = block(x, height, width)
            x = getattr(self, f'norm{stage}')(x)
            x = x.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


class MLP(nn.Module):
    def __init__(self, input_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.flatten(2).transpose(1, 2))


class ConvBNReLU(nn.Module):
    """mmcv's ``ConvModule(kernel_size=1, norm_cfg=BN)``: ``conv`` (no bias), ``bn``, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class NVlabsSegFormerHead(nn.Module):
    """NVlabs ``SegFormerHead`` (with the unused ``conv_seg`` of mmseg 0.x's ``BaseDecodeHead``)."""

    def __init__(self, in_channels: Sequence[int], embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        for stage in range(4):
            setattr(self, f'linear_c{stage + 1}', MLP(in_channels[stage], embedding_dim))
        self.linear_fuse = ConvBNReLU(embedding_dim * 4, embedding_dim)
        self.linear_pred = nn.Conv2d(embedding_dim, num_classes, kernel_size=1)
        self.conv_seg = nn.Conv2d(embedding_dim, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(0.1)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        c1 = inputs[0]
        batch = c1.shape[0]
        projected = []
        for stage in (4, 3, 2, 1):
            c = inputs[stage - 1]
            x = getattr(self, f'linear_c{stage}')(c).permute(0, 2, 1).reshape(batch, -1, c.shape[2], c.shape[3])
            if stage != 1:
                x = F.interpolate(x, size=c1.shape[2:], mode='bilinear', align_corners=False)
            projected.append(x)
        x = self.linear_fuse(torch.cat(projected, dim=1))
        return self.linear_pred(self.dropout(x))


class NVlabsSegFormer(nn.Module):
    """NVlabs ``EncoderDecoder`` with MiT and SegFormerHead: keys ``backbone.*`` and ``decode_head.*``."""

    def __init__(self, embed_dims: Sequence[int] = (32, 64, 160, 256), depths: Sequence[int] = (2, 2, 2, 2),
                 decoder_dim: int = 256, num_classes: int = 19) -> None:
        super().__init__()
        self.backbone = NVlabsMiT(embed_dims=embed_dims, depths=depths)
        del self.backbone.head  # the segmentation backbone has no classifier
        self.decode_head = NVlabsSegFormerHead(embed_dims, decoder_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits at 1/4 of the input resolution."""
        return self.decode_head(self.backbone.forward_features(x))
