"""The ERFNet authors' checkpoints (github.com/Eromera/erfnet_pytorch) onto the plugin's ERFNet.

The authors' network is ``encoder`` (``initial_block`` 3->16, ``layers.0-14``, and the encoder-stage
classifier ``output_conv`` 128->classes) plus ``decoder`` (``layers.0-5`` and ``output_conv``, a
2x2 stride-2 transposed conv to full-resolution logits); checkpoints saved from ``nn.DataParallel``
prefix every key with ``module.`` (stripped by the CLI). Two kinds are recognised:

* the full network (``erfnet_pretrained.pth``, ``model_best.pth``): converted for the config
  ``erfnet/erfnet_paper_1xb6-150e_cityscapes-512x1024.py``;
* the encoder-stage network (``model_encoder_best.pth``, no ``decoder.*`` keys): converted for
  ``erfnet/erfnet_paper-encoder_1xb6-150e_cityscapes-512x1024.py``.

The released Cityscapes model has 20 outputs: train ids 0-18 and 19 standing for the ignored label
(weight 0 in the authors' loss). The extra output is dropped, leaving the 19 Cityscapes classes, so
predictions never take the ignored label; the 19 remaining logits are unchanged.
"""
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from mmseg_ext.checkpoint.reading import BN_STATE_ENTRIES, sample_keys
from .base import CheckpointConverter, ConversionResult, config_reference, register_converter

__all__ = ['ERFNetAuthorsConverter', 'authors_erfnet_layout']

FULL_CONFIG = config_reference('erfnet/erfnet_paper_1xb6-150e_cityscapes-512x1024.py')
ENCODER_CONFIG = config_reference('erfnet/erfnet_paper-encoder_1xb6-150e_cityscapes-512x1024.py')
CITYSCAPES_CLASSES = 19
IGNORED_LABEL_OUTPUTS = CITYSCAPES_CLASSES + 1

# (kind, channels, dilation) of the authors' encoder.layers.* and decoder.layers.*
_ENCODER_LAYERS: List[Tuple[str, int, int]] = (
    [('down', 64, 1)] + [('block', 64, 1)] * 5 + [('down', 128, 1)] +
    [('block', 128, d) for d in (2, 4, 8, 16, 2, 4, 8, 16)])
_DECODER_LAYERS: List[Tuple[str, int, int]] = (
    [('up', 64, 1)] + [('block', 64, 1)] * 2 + [('up', 16, 1)] + [('block', 16, 1)] * 2)

# the authors' non_bottleneck_1d names -> index in mmseg's NonBottleneck1d.convs_layers
_BLOCK_PARTS = {'conv3x1_1': 0, 'conv1x3_1': 2, 'bn1': 3, 'conv3x1_2': 5, 'conv1x3_2': 7, 'bn2': 8}


def _conv_shapes(out_channels: int, in_channels: int, kernel: Tuple[int, int]) -> Dict[str, tuple]:
    return {'weight': (out_channels, in_channels) + kernel, 'bias': (out_channels, )}


def _bn_shapes(channels: int) -> Dict[str, tuple]:
    return {entry: (() if entry == 'num_batches_tracked' else (channels, )) for entry in BN_STATE_ENTRIES}


def _downsampler(prefix: str, target: str, in_channels: int, out_channels: int, layout: dict) -> None:
    for entry, shape in _conv_shapes(out_channels - in_channels, in_channels, (3, 3)).items():
        layout[f'{prefix}.conv.{entry}'] = (f'{target}.conv.{entry}', shape)
    for entry, shape in _bn_shapes(out_channels).items():
        layout[f'{prefix}.bn.{entry}'] = (f'{target}.bn.{entry}', shape)


def _upsampler(prefix: str, target: str, in_channels: int, out_channels: int, layout: dict) -> None:
    # ConvTranspose2d weights are (in, out, kh, kw)
    layout[f'{prefix}.conv.weight'] = (f'{target}.conv.weight', (in_channels, out_channels, 3, 3))
    layout[f'{prefix}.conv.bias'] = (f'{target}.conv.bias', (out_channels, ))
    for entry, shape in _bn_shapes(out_channels).items():
        layout[f'{prefix}.bn.{entry}'] = (f'{target}.bn.{entry}', shape)


def _non_bottleneck(prefix: str, target: str, channels: int, layout: dict) -> None:
    for part, index in _BLOCK_PARTS.items():
        if part.startswith('bn'):
            shapes = _bn_shapes(channels)
        else:
            shapes = _conv_shapes(channels, channels, (3, 1) if part.startswith('conv3x1') else (1, 3))
        for entry, shape in shapes.items():
            layout[f'{prefix}.{part}.{entry}'] = (f'{target}.convs_layers.{index}.{entry}', shape)


def _add_layers(layers: List[Tuple[str, int, int]], source: str, target: str, first_target_index: int,
                in_channels: int, layout: dict) -> int:
    """Add the authors' ``{source}.{i}`` as ``{target}.{first_target_index + i}``; returns the output channels."""
    resamplers = {'down': _downsampler, 'up': _upsampler}
    channels = in_channels
    for index, (kind, out_channels, _) in enumerate(layers):
        prefix, module = f'{source}.{index}', f'{target}.{first_target_index + index}'
        if kind == 'block':
            _non_bottleneck(prefix, module, out_channels, layout)
        else:
            resamplers[kind](prefix, module, channels, out_channels, layout)
        channels = out_channels
    return channels


def authors_erfnet_layout(num_outputs: int, with_decoder: bool) -> Dict[str, Tuple[str, tuple]]:
    """The authors' keys (without ``module.``) -> (plugin segmentor key, expected shape).

    Args:
        num_outputs: Output channels of the authors' classifiers.
        with_decoder: Whether the checkpoint is the full network (else the encoder stage).
    """
    layout: Dict[str, Tuple[str, tuple]] = {}
    _downsampler('encoder.initial_block', 'backbone.encoder.0', 3, 16, layout)
    channels = _add_layers(_ENCODER_LAYERS, 'encoder.layers', 'backbone.encoder', 1, 16, layout)
    encoder_classifier = 'decode_head.conv_seg' if not with_decoder else None
    layout['encoder.output_conv.weight'] = (f'{encoder_classifier}.weight' if encoder_classifier else None,
                                            (num_outputs, 128, 1, 1))
    layout['encoder.output_conv.bias'] = (f'{encoder_classifier}.bias' if encoder_classifier else None,
                                          (num_outputs, ))
    if with_decoder:
        _add_layers(_DECODER_LAYERS, 'decoder.layers', 'backbone.decoder', 0, channels, layout)
        layout['decoder.output_conv.weight'] = ('decode_head.conv_seg.weight', (16, num_outputs, 2, 2))
        layout['decoder.output_conv.bias'] = ('decode_head.conv_seg.bias', (num_outputs, ))
    return layout


def _is_optional(key: str) -> bool:
    """Keys that PyTorch < 0.4.1 did not save, and the encoder classifier a full network may lack."""
    return key.endswith('.num_batches_tracked') or key.startswith('encoder.output_conv.')


def _num_outputs(state_dict: Mapping[str, torch.Tensor], with_decoder: bool) -> Optional[int]:
    if with_decoder and 'decoder.output_conv.bias' in state_dict:
        return int(state_dict['decoder.output_conv.bias'].shape[0])
    if 'encoder.output_conv.bias' in state_dict:
        return int(state_dict['encoder.output_conv.bias'].shape[0])
    return None


class ERFNetAuthorsConverter(CheckpointConverter):
    """Romera et al.'s ERFNet (erfnet_pytorch), full network or encoder stage."""

    name = 'erfnet-authors'
    description = ("ERFNet as released by its authors (github.com/Eromera/erfnet_pytorch): keys "
                   "'encoder.initial_block.*', 'encoder.layers.N.*', 'decoder.layers.N.*', "
                   "'decoder.output_conv.*', optionally prefixed 'module.'")

    _SIGNATURE = ('encoder.initial_block.conv.weight', 'encoder.initial_block.bn.running_var',
                  'encoder.layers.1.conv3x1_1.weight')

    def matches(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        """Whether the authors' encoder keys are present (the plugin's own keys start 'backbone.')."""
        return all(key in state_dict for key in self._SIGNATURE)

    def mismatches(self, state_dict: Mapping[str, torch.Tensor]) -> List[str]:
        """Why ``state_dict`` is not in this layout: missing, unexpected and wrongly shaped keys."""
        with_decoder = any(key.startswith('decoder.') for key in state_dict)
        num_outputs = _num_outputs(state_dict, with_decoder) or IGNORED_LABEL_OUTPUTS
        layout = authors_erfnet_layout(num_outputs, with_decoder)
        problems = []
        missing = [key for key in layout if key not in state_dict and not _is_optional(key)]
        if missing:
            problems.append(f'{len(missing)} missing keys, e.g. {sample_keys(missing, 4, sort=False)}')
        unexpected = [key for key in state_dict if key not in layout]
        if unexpected:
            problems.append(f'{len(unexpected)} unexpected keys, e.g. {sample_keys(unexpected, 4, sort=False)}')
        wrong = [f'{key} is {tuple(state_dict[key].shape)}, expected {shape}'
                 for key, (_, shape) in layout.items()
                 if key in state_dict and tuple(state_dict[key].shape) != shape]
        if wrong:
            problems.append(f'{len(wrong)} keys with other shapes: {sample_keys(wrong, 4, sort=False)}')
        if with_decoder and 'decoder.output_conv.weight' in state_dict and \
                'encoder.output_conv.weight' in state_dict:
            encoder_outputs = int(state_dict['encoder.output_conv.weight'].shape[0])
            if encoder_outputs != num_outputs:
                problems.append(f'encoder.output_conv has {encoder_outputs} outputs but '
                                f'decoder.output_conv has {num_outputs}')
        return problems

    def convert(self, state_dict: Mapping[str, torch.Tensor]) -> ConversionResult:
        """Rename onto the plugin's ERFNet + ERFNetHead and drop the ignored label's output.

        Raises:
            ValueError: If keys are missing, unexpected or shaped differently from the authors' network.
        """
        problems = self.mismatches(state_dict)
        if problems:
            raise ValueError("not the authors' ERFNet layout: " + '; '.join(problems))
        with_decoder = any(key.startswith('decoder.') for key in state_dict)
        num_outputs = _num_outputs(state_dict, with_decoder)
        if num_outputs is None:
            raise ValueError('the checkpoint has neither decoder.output_conv nor encoder.output_conv, '
                             'so the number of classes is unknown')
        layout = authors_erfnet_layout(num_outputs, with_decoder)
        converted: Dict[str, torch.Tensor] = {}
        notes: List[str] = []
        for key, (target, _) in layout.items():
            if target is None:
                continue
            if key in state_dict:
                converted[target] = state_dict[key].clone()
            elif key.endswith('.num_batches_tracked'):
                converted[target] = torch.tensor(0, dtype=torch.long)
        if 'encoder.initial_block.bn.num_batches_tracked' not in state_dict:
            notes.append('The checkpoint predates BatchNorm.num_batches_tracked (PyTorch < 0.4.1); '
                         'those counters were set to 0 (they do not affect inference).')
        if with_decoder and 'encoder.output_conv.weight' in state_dict:
            notes.append('Dropped encoder.output_conv: the encoder-stage classifier, unused by the '
                         'full network.')
        classifier = 'decode_head.conv_seg'
        cfg_options: List[str] = []
        out_dim = 1 if with_decoder else 0  # ConvTranspose2d weights are (in, out, kh, kw)
        if num_outputs == IGNORED_LABEL_OUTPUTS:
            converted[f'{classifier}.weight'] = converted[f'{classifier}.weight'].narrow(
                out_dim, 0, CITYSCAPES_CLASSES).clone()
            converted[f'{classifier}.bias'] = converted[f'{classifier}.bias'][:CITYSCAPES_CLASSES].clone()
            notes.append(f'The classifier has {IGNORED_LABEL_OUTPUTS} outputs: the 19 Cityscapes train '
                         'ids and id 19 for the ignored label (trained with weight 0). Output 19 was '
                         'dropped; the 19 class logits are unchanged, so predictions are never the '
                         'ignored label.')
        elif num_outputs != CITYSCAPES_CLASSES:
            cfg_options.append(f'model.decode_head.num_classes={num_outputs}')
            notes.append(f'The classifier has {num_outputs} outputs, not Cityscapes\' 19: set '
                         f'{cfg_options[0]} (e.g. --cfg-options) and a matching dataset.')
        notes.append('The authors feed RGB images scaled to [0, 1] without mean/std normalisation and '
                     'evaluate at 1024x512; the config does the same.')
        return ConversionResult(state_dict=converted, config=FULL_CONFIG if with_decoder else ENCODER_CONFIG,
                                notes=notes, cfg_options=cfg_options)


register_converter(ERFNetAuthorsConverter())
