"""A stand-alone HRNetV2 + OCR with the module names of the authors' release.

This mirrors the network of HRNet-Semantic-Segmentation (branch HRNet-OCR, ``seg_hrnet_ocr.py``)
closely enough that its ``state_dict()`` has the authors' keys and its logits are the authors'
numerics: bias-free convolutions in the backbone, fuse layers that resize straight to the target
size with ``align_corners``, the four branches resized with ``align_corners`` and concatenated,
``aux_head`` (1x1 conv with bias, BN, ReLU, 1x1 conv with bias), ``conv3x3_ocr`` (3x3 conv with bias,
BN, ReLU), a spatial softmax gather, ``ocr_distri_head`` (f_pixel/f_object/f_down/f_up made of
bias-free 1x1 convs each followed by a BN+ReLU ``Sequential``, softmax(q k / sqrt(key_channels))
over the regions, ``conv_bn_dropout``) and ``cls_head``.

It deliberately imports nothing from mmseg or the plugin, so that converter tests compare two
independent implementations. It is written for the tests from the published description, not
copied from the authors' code.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

BN_MOMENTUM = 0.1

# Stage settings as (num_modules, block, num_blocks, num_channels), in the authors' yaml order.
W18_SMALL = {
    'STAGE1': (1, 'BOTTLENECK', (2, ), (64, )),
    'STAGE2': (1, 'BASIC', (2, 2), (18, 36)),
    'STAGE3': (3, 'BASIC', (2, 2, 2), (18, 36, 72)),
    'STAGE4': (2, 'BASIC', (2, 2, 2, 2), (18, 36, 72, 144)),
}

TINY = {
    'STAGE1': (1, 'BOTTLENECK', (1, ), (8, )),
    'STAGE2': (1, 'BASIC', (1, 1), (4, 8)),
    'STAGE3': (2, 'BASIC', (1, 1, 1), (4, 8, 16)),
    'STAGE4': (1, 'BASIC', (1, 1, 1, 1), (4, 8, 16, 32)),
}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _bn_relu(channels: int) -> nn.Sequential:
    """The authors' ``ModuleHelper.BNReLU``: BN at index 0, ReLU at index 1."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


BLOCKS = {'BASIC': BasicBlock, 'BOTTLENECK': Bottleneck}


def _make_blocks(block: type, inplanes: int, planes: int, count: int) -> nn.Sequential:
    downsample = None
    if inplanes != planes * block.expansion:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, bias=False),
                                   _bn(planes * block.expansion))
    layers = [block(inplanes, planes, downsample=downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(count - 1)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):

    def __init__(self, block: type, num_blocks: Sequence[int], in_channels: Sequence[int],
                 num_channels: Sequence[int], align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.num_branches = len(num_blocks)
        self.branches = nn.ModuleList(
            _make_blocks(block, in_channels[i], num_channels[i], num_blocks[i])
            for i in range(self.num_branches))
        self.out_channels = [channels * block.expansion for channels in num_channels]
        self.fuse_layers = self._make_fuse_layers() if self.num_branches > 1 else None
        self.relu = nn.ReLU()

    def _make_fuse_layers(self) -> nn.ModuleList:
        channels = self.out_channels
        rows = []
        for i in range(self.num_branches):
            row: List[Optional[nn.Module]] = []
            for j in range(self.num_branches):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, bias=False),
                                             _bn(channels[i])))
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out = channels[i] if last else channels[j]
                        step = [nn.Conv2d(channels[j], out, 3, 2, 1, bias=False), _bn(out)]
                        if not last:
                            step.append(nn.ReLU())
                        steps.append(nn.Sequential(*step))
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(row))
        return nn.ModuleList(rows)

    def forward(self, x: List[Tensor]) -> List[Tensor]:
        x = [branch(feature) for branch, feature in zip(self.branches, x)]
        if self.fuse_layers is None:
            return x
        outputs = []
        for i in range(self.num_branches):
            y = x[0] if i == 0 else self.fuse_layers[i][0](x[0])
            for j in range(1, self.num_branches):
                if j == i:
                    y = y + x[j]
                elif j > i:
                    y = y + F.interpolate(self.fuse_layers[i][j](x[j]), size=x[i].shape[2:],
                                          mode='bilinear', align_corners=self.align_corners)
                else:
                    y = y + self.fuse_layers[i][j](x[j])
            outputs.append(self.relu(y))
        return outputs


class SpatialGather_Module(nn.Module):

    def forward(self, feats: Tensor, probs: Tensor) -> Tensor:
        batch, classes = probs.shape[:2]
        probs = F.softmax(probs.reshape(batch, classes, -1), dim=2)  # over pixels
        feats = feats.reshape(batch, feats.shape[1], -1).permute(0, 2, 1)
        return torch.matmul(probs, feats).permute(0, 2, 1).unsqueeze(3)


class ObjectAttentionBlock2D(nn.Module):

    def __init__(self, in_channels: int, key_channels: int, scale: int, align_corners: bool) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.scale = scale
        self.align_corners = align_corners
        self.pool = nn.MaxPool2d(kernel_size=(scale, scale))

        def projection(cin: int, cout: int, twice: bool) -> nn.Sequential:
            layers = [nn.Conv2d(cin, cout, 1, bias=False), _bn_relu(cout)]
            if twice:
                layers += [nn.Conv2d(cout, cout, 1, bias=False), _bn_relu(cout)]
            return nn.Sequential(*layers)

        self.f_pixel = projection(in_channels, key_channels, True)
        self.f_object = projection(in_channels, key_channels, True)
        self.f_down = projection(in_channels, key_channels, False)
        self.f_up = projection(key_channels, in_channels, False)

    def forward(self, x: Tensor, proxy: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        if self.scale > 1:
            x = self.pool(x)
        query = self.f_pixel(x).reshape(batch, self.key_channels, -1).permute(0, 2, 1)
        key = self.f_object(proxy).reshape(batch, self.key_channels, -1)
        value = self.f_down(proxy).reshape(batch, self.key_channels, -1).permute(0, 2, 1)
        attention = F.softmax(torch.matmul(query, key) * self.key_channels**-0.5, dim=-1)
        context = torch.matmul(attention, value).permute(0, 2, 1).reshape(
            batch, self.key_channels, *x.shape[2:])
        context = self.f_up(context)
        if self.scale > 1:
            context = F.interpolate(context, size=(height, width), mode='bilinear',
                                    align_corners=self.align_corners)
        return context


class SpatialOCR_Module(nn.Module):

    def __init__(self, in_channels: int, key_channels: int, out_channels: int, scale: int,
                 dropout: float, align_corners: bool) -> None:
        super().__init__()
        self.object_context_block = ObjectAttentionBlock2D(in_channels, key_channels, scale,
                                                           align_corners)
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, 1, bias=False), _bn_relu(out_channels),
            nn.Dropout2d(dropout))

    def forward(self, feats: Tensor, proxy_feats: Tensor) -> Tensor:
        context = self.object_context_block(feats, proxy_feats)
        return self.conv_bn_dropout(torch.cat([context, feats], 1))


class HighResolutionNetOCR(nn.Module):
    """HRNetV2 + OCR in the authors' layout.

    Args:
        stages: ``{'STAGE1'..'STAGE4': (num_modules, block, num_blocks, num_channels)}``.
        num_classes: Classes.
        mid_channels: ``MODEL.OCR.MID_CHANNELS``.
        key_channels: ``MODEL.OCR.KEY_CHANNELS``.
        scale: ``SpatialOCR_Module`` scale (1 in every release).
        align_corners: ``MODEL.ALIGN_CORNERS``.
    """

    def __init__(self, stages: Dict[str, tuple], num_classes: int = 19, mid_channels: int = 512,
                 key_channels: int = 256, scale: int = 1, align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU()

        _, block_name, num_blocks, num_channels = stages['STAGE1']
        block = BLOCKS[block_name]
        self.layer1 = _make_blocks(block, 64, num_channels[0], num_blocks[0])
        previous = [num_channels[0] * block.expansion]
        for index in (2, 3, 4):
            num_modules, block_name, num_blocks, num_channels = stages[f'STAGE{index}']
            block = BLOCKS[block_name]
            current = [channels * block.expansion for channels in num_channels]
            setattr(self, f'transition{index - 1}', self._make_transition(previous, current))
            modules = []
            in_channels = list(current)
            for _ in range(num_modules):
                module = HighResolutionModule(block, num_blocks, in_channels, num_channels,
                                              align_corners)
                modules.append(module)
                in_channels = module.out_channels
            setattr(self, f'stage{index}', nn.Sequential(*modules))
            previous = in_channels

        total = sum(previous)
        self.conv3x3_ocr = nn.Sequential(nn.Conv2d(total, mid_channels, 3, 1, 1), nn.BatchNorm2d(mid_channels),
                                         nn.ReLU())
        self.ocr_gather_head = SpatialGather_Module()
        self.ocr_distri_head = SpatialOCR_Module(mid_channels, key_channels, mid_channels, scale, 0.05,
                                                 align_corners)
        self.cls_head = nn.Conv2d(mid_channels, num_classes, 1, bias=True)
        self.aux_head = nn.Sequential(nn.Conv2d(total, total, 1), nn.BatchNorm2d(total), nn.ReLU(),
                                      nn.Conv2d(total, num_classes, 1, bias=True))

    @staticmethod
    def _make_transition(previous: List[int], current: List[int]) -> nn.ModuleList:
        layers: List[Optional[nn.Module]] = []
        for i, channels in enumerate(current):
            if i < len(previous):
                if channels != previous[i]:
                    layers.append(nn.Sequential(nn.Conv2d(previous[i], channels, 3, 1, 1, bias=False),
                                                _bn(channels), nn.ReLU()))
                else:
                    layers.append(None)
            else:
                steps = []
                for j in range(i + 1 - len(previous)):
                    out = channels if j == i - len(previous) else previous[-1]
                    steps.append(nn.Sequential(nn.Conv2d(previous[-1], out, 3, 2, 1, bias=False), _bn(out),
                                               nn.ReLU()))
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    def _run_stage(self, index: int, inputs: List[Tensor]) -> List[Tensor]:
        transition = getattr(self, f'transition{index - 1}')
        features = []
        for i, layer in enumerate(transition):
            if layer is None:
                features.append(inputs[i])
            else:
                features.append(layer(inputs[i] if i < len(inputs) else inputs[-1]))
        return getattr(self, f'stage{index}')(features)

    def forward(self, x: Tensor) -> List[Tensor]:
        """Returns ``[aux_logits, ocr_logits]`` at 1/4 of the input size."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        features = [self.layer1(x)]
        for index in (2, 3, 4):
            features = self._run_stage(index, features)
        size = features[0].shape[2:]
        feats = torch.cat([features[0]] + [
            F.interpolate(feature, size=size, mode='bilinear', align_corners=self.align_corners)
            for feature in features[1:]
        ], 1)
        out_aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        context = self.ocr_gather_head(feats, out_aux)
        feats = self.ocr_distri_head(feats, context)
        return [out_aux, self.cls_head(feats)]
