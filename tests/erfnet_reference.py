"""Test helpers for the ERFNet family.

``AuthorsERFNet`` re-creates the network of the ERFNet authors' code (github.com/Eromera/erfnet_pytorch)
from its documented structure: the same module names (hence checkpoint keys), layer order and batch-norm
epsilon, so converted checkpoints can be checked against it without downloading anything.
"""
import importlib.util
import os.path as osp
from types import ModuleType
from typing import Iterator, Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
AUTHORS_EPS = 1e-3


class AuthorsDownsamplerBlock(nn.Module):
    """3x3 stride-2 conv to ``out - in`` channels, concatenated with a 2x2 max-pool; BN; ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=AUTHORS_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class AuthorsNonBottleneck1d(nn.Module):
    """3x1, ReLU, 1x3, BN, ReLU, 3x1 (dilated), ReLU, 1x3 (dilated), BN, dropout, + input, ReLU."""

    def __init__(self, channels: int, dropout: float, dilation: int) -> None:
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(channels, eps=AUTHORS_EPS)
        self.conv3x1_2 = nn.Conv2d(channels, channels, (3, 1), padding=(dilation, 0), dilation=(dilation, 1),
                                   bias=True)
        self.conv1x3_2 = nn.Conv2d(channels, channels, (1, 3), padding=(0, dilation), dilation=(1, dilation),
                                   bias=True)
        self.bn2 = nn.BatchNorm2d(channels, eps=AUTHORS_EPS)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.bn2(self.conv1x3_2(out))
        if self.dropout.p != 0:
            out = self.dropout(out)
        return F.relu(out + x)


class AuthorsUpsamplerBlock(nn.Module):
    """3x3 stride-2 transposed conv (padding 1, output padding 1), BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1,
                                       bias=True)
        self.bn = nn.BatchNorm2d(out_channels, eps=AUTHORS_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class AuthorsEncoder(nn.Module):

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.initial_block = AuthorsDownsamplerBlock(3, 16)
        layers = [AuthorsDownsamplerBlock(16, 64)]
        layers += [AuthorsNonBottleneck1d(64, 0.03, 1) for _ in range(5)]
        layers.append(AuthorsDownsamplerBlock(64, 128))
        layers += [AuthorsNonBottleneck1d(128, 0.3, d) for d in (2, 4, 8, 16, 2, 4, 8, 16)]
        self.layers = nn.ModuleList(layers)
        self.output_conv = nn.Conv2d(128, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor, predict: bool = False) -> torch.Tensor:
        x = self.initial_block(x)
        for layer in self.layers:
            x = layer(x)
        return self.output_conv(x) if predict else x


class AuthorsDecoder(nn.Module):

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            AuthorsUpsamplerBlock(128, 64), AuthorsNonBottleneck1d(64, 0, 1), AuthorsNonBottleneck1d(64, 0, 1),
            AuthorsUpsamplerBlock(64, 16), AuthorsNonBottleneck1d(16, 0, 1), AuthorsNonBottleneck1d(16, 0, 1)
        ])
        self.output_conv = nn.ConvTranspose2d(16, num_classes, 2, stride=2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output_conv(x)


class AuthorsERFNet(nn.Module):
    """The authors' ``Net``: ``forward(x, only_encode=True)`` is their encoder-stage network."""

    def __init__(self, num_classes: int = 20) -> None:
        super().__init__()
        self.encoder = AuthorsEncoder(num_classes)
        self.decoder = AuthorsDecoder(num_classes)

    def forward(self, x: torch.Tensor, only_encode: bool = False) -> torch.Tensor:
        if only_encode:
            return self.encoder(x, predict=True)
        return self.decoder(self.encoder(x))


def batch_norms(model: nn.Module) -> Iterator[nn.modules.batchnorm._BatchNorm]:
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@torch.no_grad()
def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial affine parameters and running statistics."""
    generator = torch.Generator().manual_seed(seed)
    for bn in batch_norms(model):
        shape = bn.running_mean.shape
        bn.running_mean.copy_(torch.randn(shape, generator=generator) * 0.3)
        bn.running_var.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.25)
        if bn.weight is not None:
            bn.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(shape, generator=generator) * 0.2)
        bn.num_batches_tracked.fill_(1000)
    return model


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` (tools/ is not a package)."""
    path = osp.join(REPO_ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'tools_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f'shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}'
    return float((a - b).abs().max())


def mmseg_config_path(relative: str) -> str:
    """Path of a config shipped inside the installed mmseg package (``mmseg::relative``)."""
    import mmseg
    return osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs', relative)


def build_segmentor(config_path: str, cfg_options: Optional[dict] = None) -> nn.Module:
    """Build the segmentor of a config file in mmseg's default scope."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope('mmseg')
    return MODELS.build(cfg.model)


@pytest.fixture(autouse=True, scope='module')
def single_torch_thread():
    """Run a test module's work on one intra-op thread.

    On a machine whose cores are shared with other busy processes, every multi-threaded op waits for a
    descheduled OpenMP thread and small forwards take seconds instead of milliseconds.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
