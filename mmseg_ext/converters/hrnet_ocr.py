"""The authors' HRNetV2 + OCR checkpoints (HRNet-Semantic-Segmentation, branch HRNet-OCR).

Layout (keys possibly prefixed by ``model.`` or ``module.``)::

    conv1 bn1 conv2 bn2 layer1 transition1..3 stage2..4   HRNetV2 backbone (mmseg's keys already)
    aux_head.0 (1x1 conv + bias) .1 (BN) .3 (1x1 conv + bias)  soft object regions
    conv3x3_ocr.0 (3x3 conv + bias) .1 (BN)
    ocr_distri_head.object_context_block.f_pixel/f_object.{0,1.0,2,3.0} f_down/f_up.{0,1.0}
    ocr_distri_head.conv_bn_dropout.{0,1.0}
    cls_head (1x1 conv + bias)

Target: ``CascadeEncoderDecoder`` with ``mmseg_ext.HRNet`` (mmseg's HRNet, keys unchanged, with the
authors' ``align_corners=True`` fuse upsampling), mmseg's ``FCNHead`` (aux_head) and
``mmseg_ext.OCRHead``. mmseg's heads use bias-free convolutions followed by BN where the authors'
``aux_head.0`` and ``conv3x3_ocr.0`` carry a bias; in eval mode ``BN(conv(x) + b)`` equals
``BN'(conv(x))`` with ``running_mean' = running_mean - b``, so the biases are folded into the BNs
exactly.
"""
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Tuple

import torch

from mmseg_ext.checkpoint.reading import BN_STATE_ENTRIES
from .base import CheckpointConverter, ConversionResult, config_reference, register_converter

__all__ = ['HRNetOCRConverter', 'HRNetOCRArchitecture', 'AUTHORS_CONFIG']

AUTHORS_CONFIG = config_reference('ocrnet/ocrnet_hr48-authors_4xb3-120k_cityscapes-512x1024.py')

_BACKBONE_PREFIXES = ('conv1.', 'bn1.', 'conv2.', 'bn2.', 'layer1.', 'transition1.', 'transition2.',
                      'transition3.', 'stage2.', 'stage3.', 'stage4.')
_OCR = 'ocr_distri_head.'
_OCB = _OCR + 'object_context_block.'
_HEAD = 'decode_head.1.'

# Authors' conv (no bias) / BN module -> plugin ConvModule, inside the OCR head.
_OCR_MODULES: Tuple[Tuple[str, str], ...] = (
    (_OCB + 'f_pixel.0', 'object_context_block.query_project.0.conv'),
    (_OCB + 'f_pixel.1.0', 'object_context_block.query_project.0.bn'),
    (_OCB + 'f_pixel.2', 'object_context_block.query_project.1.conv'),
    (_OCB + 'f_pixel.3.0', 'object_context_block.query_project.1.bn'),
    (_OCB + 'f_object.0', 'object_context_block.key_project.0.conv'),
    (_OCB + 'f_object.1.0', 'object_context_block.key_project.0.bn'),
    (_OCB + 'f_object.2', 'object_context_block.key_project.1.conv'),
    (_OCB + 'f_object.3.0', 'object_context_block.key_project.1.bn'),
    (_OCB + 'f_down.0', 'object_context_block.value_project.conv'),
    (_OCB + 'f_down.1.0', 'object_context_block.value_project.bn'),
    (_OCB + 'f_up.0', 'object_context_block.out_project.conv'),
    (_OCB + 'f_up.1.0', 'object_context_block.out_project.bn'),
    (_OCR + 'conv_bn_dropout.0', 'object_context_block.bottleneck.conv'),
    (_OCR + 'conv_bn_dropout.1.0', 'object_context_block.bottleneck.bn'),
)

_AUTHORS_W48 = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(4, ), num_channels=(64, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(4, 4), num_channels=(48, 96)),
    stage3=dict(num_modules=4, num_branches=3, block='BASIC', num_blocks=(4, 4, 4),
                num_channels=(48, 96, 192)),
    stage4=dict(num_modules=3, num_branches=4, block='BASIC', num_blocks=(4, 4, 4, 4),
                num_channels=(48, 96, 192, 384)))


@dataclass
class HRNetOCRArchitecture:
    """What a checkpoint in the authors' layout says about its network.

    Attributes:
        extra: mmseg ``HRNet`` stage settings (``stage1``..``stage4``).
        num_classes: Classes of both heads.
        mid_channels: ``MODEL.OCR.MID_CHANNELS`` (the OCR head's ``channels``).
        key_channels: ``MODEL.OCR.KEY_CHANNELS`` (the OCR head's ``ocr_channels``).
    """
    extra: Dict[str, dict]
    num_classes: int
    mid_channels: int
    key_channels: int

    @property
    def branch_channels(self) -> List[int]:
        """Output channels of the four stage-4 branches."""
        return list(self.extra['stage4']['num_channels'])

    def model_config(self) -> dict:
        """The segmentor config (``model=``) that reproduces the authors' network."""
        norm_cfg = dict(type='SyncBN', requires_grad=True)
        channels = self.branch_channels
        return dict(
            type='CascadeEncoderDecoder',
            num_stages=2,
            backbone=dict(type='mmseg_ext.HRNet', align_corners=True, norm_cfg=norm_cfg, norm_eval=False,
                          extra=self.extra),
            decode_head=[
                dict(type='FCNHead', in_channels=channels, in_index=(0, 1, 2, 3),
                     input_transform='resize_concat', channels=sum(channels), kernel_size=1, num_convs=1,
                     concat_input=False, dropout_ratio=-1, num_classes=self.num_classes,
                     norm_cfg=norm_cfg, align_corners=True,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
                dict(type='mmseg_ext.OCRHead', in_channels=channels, in_index=(0, 1, 2, 3),
                     input_transform='resize_concat', channels=self.mid_channels,
                     ocr_channels=self.key_channels, scale=1, gather_scale=1.0, dropout_ratio=0.05,
                     num_classes=self.num_classes, norm_cfg=norm_cfg, align_corners=True,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
            ])

    def overrides_of_authors_config(self) -> List[str]:
        """``--cfg-options`` turning :data:`AUTHORS_CONFIG` (W48, 19 classes) into this network."""
        options = []
        for stage, settings in self.extra.items():
            for key, value in settings.items():
                if _AUTHORS_W48[stage][key] != value:
                    text = repr(tuple(value)).replace(' ', '') if isinstance(value, tuple) else repr(value)
                    options.append(f'model.backbone.extra.{stage}.{key}={text}')
        channels = self.branch_channels
        if channels != list(_AUTHORS_W48['stage4']['num_channels']):
            text = repr(tuple(channels)).replace(' ', '')
            options += [f'model.decode_head.0.in_channels={text}',
                        f'model.decode_head.0.channels={sum(channels)}',
                        f'model.decode_head.1.in_channels={text}']
        if self.mid_channels != 512:
            options.append(f'model.decode_head.1.channels={self.mid_channels}')
        if self.key_channels != 256:
            options.append(f'model.decode_head.1.ocr_channels={self.key_channels}')
        if self.num_classes != 19:
            options += [f'model.decode_head.0.num_classes={self.num_classes}',
                        f'model.decode_head.1.num_classes={self.num_classes}']
        return options


def _indices(keys: List[str], prefix: str) -> List[int]:
    """Sorted distinct integers ``n`` over the keys starting with ``prefix + 'n.'``."""
    pattern = re.compile(re.escape(prefix) + r'(\d+)\.')
    return sorted({int(match.group(1)) for key in keys if (match := pattern.match(key))})


def _count(keys: List[str], prefix: str) -> int:
    indices = _indices(keys, prefix)
    if indices != list(range(len(indices))):
        raise ValueError(f"modules under '{prefix}' are numbered {indices}, expected 0..{len(indices) - 1}")
    return len(indices)


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> HRNetOCRArchitecture:
    """Read stage settings, widths and class count from a checkpoint in the authors' layout."""
    keys = list(state_dict)

    def block_of(prefix: str) -> str:
        return 'BOTTLENECK' if f'{prefix}conv3.weight' in state_dict else 'BASIC'

    extra = dict(stage1=dict(num_modules=1, num_branches=1, block=block_of('layer1.0.'),
                             num_blocks=(_count(keys, 'layer1.'), ),
                             num_channels=(int(state_dict['layer1.0.conv1.weight'].shape[0]), )))
    for index in (2, 3, 4):
        stage = f'stage{index}.'
        num_modules = _count(keys, stage)
        num_branches = _count(keys, f'{stage}0.branches.')
        if num_modules == 0 or num_branches != index:
            raise ValueError(f"'{stage[:-1]}' has {num_modules} modules and {num_branches} branches; "
                             f'HRNetV2 has {index} branches in stage {index}')
        extra[f'stage{index}'] = dict(
            num_modules=num_modules,
            num_branches=num_branches,
            block=block_of(f'{stage}0.branches.0.0.'),
            num_blocks=tuple(_count(keys, f'{stage}0.branches.{b}.') for b in range(num_branches)),
            num_channels=tuple(int(state_dict[f'{stage}0.branches.{b}.0.conv1.weight'].shape[0])
                               for b in range(num_branches)))
    return HRNetOCRArchitecture(
        extra=extra,
        num_classes=int(state_dict['cls_head.weight'].shape[0]),
        mid_channels=int(state_dict['conv3x3_ocr.0.weight'].shape[0]),
        key_channels=int(state_dict[_OCB + 'f_pixel.0.weight'].shape[0]))


def _copy_bn(state_dict: Mapping[str, torch.Tensor], source: str, target: str,
             out: Dict[str, torch.Tensor], used: set, conv_bias: torch.Tensor = None) -> None:
    """Copy BN ``source`` to ``target``, folding a preceding conv's bias into the running mean."""
    for name in BN_STATE_ENTRIES:
        key = f'{source}.{name}'
        if key in state_dict:
            value = state_dict[key]
            used.add(key)
        elif name == 'num_batches_tracked':  # absent from checkpoints of the InPlaceABN era
            value = torch.tensor(0, dtype=torch.long)
        else:
            raise ValueError(f"the checkpoint lacks '{key}'")
        if name == 'running_mean' and conv_bias is not None:
            value = value - conv_bias.to(value.dtype)
        out[f'{target}.{name}'] = value.clone()


def _backbone_bn_prefixes(state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """BN modules of the backbone that lack ``num_batches_tracked``."""
    prefixes = []
    for key in state_dict:
        if key.startswith(_BACKBONE_PREFIXES) and key.endswith('.running_var'):
            prefix = key[:-len('running_var')]
            if prefix + 'num_batches_tracked' not in state_dict:
                prefixes.append(prefix)
    return prefixes


class HRNetOCRConverter(CheckpointConverter):
    """HRNet-Semantic-Segmentation (HRNet-OCR branch) -> mmseg HRNet + FCNHead + plugin OCRHead."""

    name = 'hrnet-ocr'
    description = ("the authors' HRNetV2 + OCR (HRNet-Semantic-Segmentation, branch HRNet-OCR: "
                   'aux_head, conv3x3_ocr, ocr_distri_head, cls_head)')

    required_keys = ('conv1.weight', 'stage4.0.branches.0.0.conv1.weight', 'aux_head.0.weight',
                     'conv3x3_ocr.0.weight', _OCB + 'f_pixel.0.weight', 'cls_head.weight')

    def matches(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        """Whether the keys are the authors' HRNet-OCR layout."""
        return not self.mismatches(state_dict)

    def mismatches(self, state_dict: Mapping[str, torch.Tensor]) -> List[str]:
        """The layout's landmark keys that ``state_dict`` lacks (shown by the CLI for unknown files)."""
        return [f"no '{key}'" for key in self.required_keys if key not in state_dict]

    def convert(self, state_dict: Mapping[str, torch.Tensor]) -> ConversionResult:
        """Map the authors' keys onto the plugin's segmentor, folding head conv biases into BNs."""
        missing = [key for key in ('aux_head.0.bias', 'aux_head.3.weight', 'aux_head.3.bias', 'conv3x3_ocr.0.bias',
                                   'cls_head.bias') if key not in state_dict]
        if missing:
            raise ValueError(f'the checkpoint lacks {missing}; is it an HRNet-OCR checkpoint?')
        architecture = infer_architecture(state_dict)
        out: Dict[str, torch.Tensor] = {}
        used = set()

        for key, value in state_dict.items():
            if key.startswith(_BACKBONE_PREFIXES):
                out['backbone.' + key] = value.clone()
                used.add(key)
        for prefix in _backbone_bn_prefixes(state_dict):
            out[f'backbone.{prefix}num_batches_tracked'] = torch.tensor(0, dtype=torch.long)

        # aux_head -> FCNHead: conv (bias folded into the BN), BN, classifier.
        out['decode_head.0.convs.0.conv.weight'] = state_dict['aux_head.0.weight'].clone()
        used.update({'aux_head.0.weight', 'aux_head.0.bias'})
        _copy_bn(state_dict, 'aux_head.1', 'decode_head.0.convs.0.bn', out, used,
                 conv_bias=state_dict['aux_head.0.bias'])
        for name in ('weight', 'bias'):
            out[f'decode_head.0.conv_seg.{name}'] = state_dict[f'aux_head.3.{name}'].clone()
            used.add(f'aux_head.3.{name}')

        # conv3x3_ocr -> OCRHead.bottleneck, bias folded into the BN.
        out[_HEAD + 'bottleneck.conv.weight'] = state_dict['conv3x3_ocr.0.weight'].clone()
        used.update({'conv3x3_ocr.0.weight', 'conv3x3_ocr.0.bias'})
        _copy_bn(state_dict, 'conv3x3_ocr.1', _HEAD + 'bottleneck.bn', out, used,
                 conv_bias=state_dict['conv3x3_ocr.0.bias'])

        for source, target in _OCR_MODULES:
            if target.endswith('.bn'):
                _copy_bn(state_dict, source, _HEAD + target, out, used)
            else:
                key = f'{source}.weight'
                if key not in state_dict:
                    raise ValueError(f"the checkpoint lacks '{key}'")
                if f'{source}.bias' in state_dict:
                    raise ValueError(f"'{source}.bias' is unexpected: the authors' OCR convs have no bias")
                out[_HEAD + target + '.weight'] = state_dict[key].clone()
                used.add(key)
        for name in ('weight', 'bias'):
            out[_HEAD + f'conv_seg.{name}'] = state_dict[f'cls_head.{name}'].clone()
            used.add(f'cls_head.{name}')

        unused = sorted(set(state_dict) - used)
        if unused:
            raise ValueError(f'{len(unused)} keys of the checkpoint have no place in HRNet + OCR: '
                             f"{', '.join(unused[:10])}{' ...' if len(unused) > 10 else ''}")

        arch = architecture
        notes = [
            f"HRNetV2 stage-4 widths {arch.branch_channels}, {arch.num_classes} classes, OCR mid/key channels "
            f'{arch.mid_channels}/{arch.key_channels}; numerics as the authors: align_corners=True in the '
            "backbone's fuse layers, the branch concatenation and the final resize (MODEL.ALIGN_CORNERS).",
            'conv biases of aux_head.0 and conv3x3_ocr.0 folded into the following BN running means '
            '(exact in eval mode).',
        ]
        overrides = arch.overrides_of_authors_config()
        if overrides:
            notes.append('this network differs from the config below (HRNetV2-W48, Cityscapes); use it with '
                         '--cfg-options ' + ' '.join(overrides)
                         + (' and a dataset with that many classes' if arch.num_classes != 19 else ''))
        return ConversionResult(state_dict=out, config=AUTHORS_CONFIG, notes=notes, cfg_options=overrides)


register_converter(HRNetOCRConverter())
