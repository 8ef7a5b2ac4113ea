"""The ERFNet authors' network, re-created for tests.

``AuthorsERFNet`` re-creates the network of the ERFNet authors' code (github.com/Eromera/erfnet_pytorch)
from its documented structure: the same module names (hence checkpoint keys), layer order and batch-norm
epsilon, so converted checkpoints can be checked against it without downloading anything.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

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
