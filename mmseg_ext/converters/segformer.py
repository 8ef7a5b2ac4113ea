"""SegFormer segmentation checkpoints of the NVlabs code and of Hugging Face ``transformers``.

Layouts (decoder part; the encoder layouts are in :mod:`mmseg_ext.checkpoint.mit_layouts`)::

    NVlabs (mmseg 0.x based), under ``state_dict``:
        backbone.patch_embed{1-4}.* backbone.block{1-4}.* backbone.norm{1-4}.*   MiT encoder
        decode_head.linear_c{1-4}.proj.{weight,bias}   Linear per stage (no norm, no activation)
        decode_head.linear_fuse.conv.weight, decode_head.linear_fuse.bn.*   1x1 conv (no bias), BN, ReLU
        decode_head.linear_pred.{weight,bias}   classifier; decode_head.conv_seg.* (unused, dropped)
    Hugging Face SegformerForSemanticSegmentation (model.safetensors / pytorch_model.bin):
        segformer.encoder.*   MiT encoder
        decode_head.linear_c.{0-3}.proj.{weight,bias}, decode_head.linear_fuse.weight (no bias),
        decode_head.batch_norm.*, decode_head.classifier.{weight,bias}

Both decoders concatenate the projected stages in the order c4, c3, c2, c1. Target: ``EncoderDecoder``
with ``mmseg_ext.MixVisionTransformer`` and ``mmseg_ext.SegformerHead(head_style='official')``,
built by the configs ``segformer/segformer-official_mit-b{0-5}_*.py``.

The variant (B0-B5), decoder width and class count are read from the tensor shapes. The number of
attention heads is not visible in the weights: every published SegFormer uses ``[1, 2, 5, 8]``, which
the configs use; a Hugging Face ``config.json`` that says otherwise is refused when the directory is
read (see :func:`check_hf_segformer_config`).
"""
from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import Tensor

from mmseg_ext.checkpoint.mit_layouts import EncoderExtraction, extract_mit_encoder, linear_to_conv1x1
from mmseg_ext.checkpoint.reading import BN_STATE_ENTRIES, register_hf_config_check
from mmseg_ext.errors import InvalidArgumentError
from mmseg_ext.mit_arch import (MIT_ARCH_SETTINGS, PUBLISHED_MLP_RATIOS, PUBLISHED_PATCH_SIZES, PUBLISHED_SR_RATIOS,
                                PUBLISHED_STRIDES, infer_mit_arch)
from .base import CheckpointConverter, ConversionResult, config_reference, register_converter

__all__ = ['SegformerNVlabsConverter', 'SegformerHFConverter', 'official_config',
           'check_hf_segformer_config', 'OFFICIAL_DECODER_CHANNELS', 'DATASET_CONFIGS']

#: Decoder width of the official configs (NVlabs: 256 for B0/B1, 768 for B2-B5).
OFFICIAL_DECODER_CHANNELS = {'b0': 256, 'b1': 256, 'b2': 768, 'b3': 768, 'b4': 768, 'b5': 768}
#: Class count -> (dataset, config suffix) of the official-decoder configs.
DATASET_CONFIGS = {19: ('Cityscapes', '8xb1-160k_cityscapes-1024x1024'), 150: ('ADE20K', '8xb2-160k_ade20k-512x512')}
_PUBLISHED = dict(num_attention_heads=[1, 2, 5, 8], patch_sizes=PUBLISHED_PATCH_SIZES, strides=PUBLISHED_STRIDES,
                  sr_ratios=PUBLISHED_SR_RATIOS, mlp_ratios=PUBLISHED_MLP_RATIOS, num_channels=3, num_encoder_blocks=4,
                  hidden_act='gelu')


def official_config(arch: str, num_classes: int) -> str:
    """The official-decoder config for MiT-``arch`` and ``num_classes`` classes, as the tools name it."""
    if num_classes not in DATASET_CONFIGS:
        known = ', '.join(f'{count} ({name})' for count, (name, _) in DATASET_CONFIGS.items())
        raise InvalidArgumentError(f'the classifier has {num_classes} classes; the repository has official-decoder '
                                   f'configs for {known} classes only')
    return config_reference(f'segformer/segformer-official_mit-{arch}_{DATASET_CONFIGS[num_classes][1]}.py')


def check_hf_segformer_config(config: Mapping[str, Any]) -> None:
    """Refuse a Hugging Face SegFormer ``config.json`` whose architecture the weights cannot show and the
    repository configs do not build (attention heads, patch sizes, strides, reductions, activation).

    Raises:
        ValueError: naming each such value and the published one.
    """
    wrong = {name: (config[name], value) for name, value in _PUBLISHED.items()
             if name in config and config[name] != value}
    if config.get('reshape_last_stage') is False:
        wrong['reshape_last_stage'] = (False, True)
    if wrong:
        detail = '; '.join(f'{name}={got!r} (published: {want!r})' for name, (got, want) in wrong.items())
        raise ValueError(f'config.json describes a SegFormer the repository configs cannot build: {detail}')


register_hf_config_check('segformer', check_hf_segformer_config)


class _SegformerConverter(CheckpointConverter):
    """Shared conversion: encoder through the shared key mapping, decoder through ``_decoder_map``."""

    #: Keys (without prefix) whose presence identifies the layout.
    signature: Tuple[str, ...] = ()
    encoder_prefix = ''
    decoder_prefix = 'decode_head.'
    #: Decoder keys that are dropped (with a note).
    ignored_decoder_keys: Tuple[str, ...] = ()

    def matches(self, state_dict: Mapping[str, Tensor]) -> bool:
        return all(key in state_dict for key in self.signature)

    def mismatches(self, state_dict: Mapping[str, Tensor]) -> List[str]:
        """Why ``state_dict`` is not in this layout (for the CLI's explanation)."""
        missing = [key for key in self.signature if key not in state_dict]
        problems = [f'lacks {", ".join(missing)}'] if missing else []
        if any(key.startswith(('patch_embed1.', 'encoder.patch_embeddings.', 'layers.0.0.')) for key in state_dict):
            problems.append('this looks like an encoder-only (ImageNet) MiT checkpoint: use it directly as '
                            "backbone init_cfg=dict(type='Pretrained', checkpoint=...), no conversion needed")
        return problems

    #: The source decoder's module names (without ``decode_head.``): the per-stage Linear (``{stage}``
    #: as the layout numbers stages), the fusion conv, its BN and the classifier.
    stage_linear = ''
    first_stage = 0
    fuse_conv = ''
    fuse_bn = ''
    classifier = ''

    def _decoder_map(self, num_stages: int) -> Dict[str, Tuple[str, bool]]:
        """Source decoder key (without prefix) -> (plugin key without ``decode_head.``, reshape to 1x1)."""
        mapping = {}
        for stage in range(num_stages):
            source = self.stage_linear.format(stage=stage + self.first_stage)
            for param in ('weight', 'bias'):
                mapping[f'{source}.{param}'] = (f'convs.{stage}.conv.{param}', True)
        mapping[f'{self.fuse_conv}.weight'] = ('fusion_conv.conv.weight', False)
        for param in BN_STATE_ENTRIES:
            mapping[f'{self.fuse_bn}.{param}'] = (f'fusion_conv.bn.{param}', False)
        for param in ('weight', 'bias'):
            mapping[f'{self.classifier}.{param}'] = (f'conv_seg.{param}', False)
        return mapping

    def convert(self, state_dict: Mapping[str, Tensor]) -> ConversionResult:
        extraction: EncoderExtraction = extract_mit_encoder(
            {key: value for key, value in state_dict.items() if key.startswith(self.encoder_prefix)})
        if extraction.unused:
            raise ValueError(f'unknown encoder keys: {", ".join(sorted(extraction.unused)[:8])}')
        encoder = extraction.state_dict
        arch = infer_mit_arch(encoder)
        num_stages = len(MIT_ARCH_SETTINGS[arch]['num_layers'])
        converted: Dict[str, Tensor] = {f'backbone.{key}': value for key, value in encoder.items()}

        decoder = {key[len(self.decoder_prefix):]: value for key, value in state_dict.items()
                   if key.startswith(self.decoder_prefix)}
        mapping = self._decoder_map(num_stages)
        required = [key for key in mapping if not key.endswith('num_batches_tracked')]
        missing = [self.decoder_prefix + key for key in required if key not in decoder]
        if missing:
            raise ValueError(f'the decoder lacks {", ".join(missing)}')
        notes: List[str] = []
        for key, value in decoder.items():
            if key in mapping:
                target, reshape = mapping[key]
                converted[f'decode_head.{target}'] = linear_to_conv1x1(value) if reshape else value
            elif key not in self.ignored_decoder_keys:
                raise ValueError(f'unknown decoder key {self.decoder_prefix}{key}')
        dropped = [self.decoder_prefix + key for key in self.ignored_decoder_keys if key in decoder]
        if dropped:
            notes.append(f'dropped {", ".join(dropped)} (not used by the official decoder)')
        if 'decode_head.fusion_conv.bn.num_batches_tracked' not in converted:
            converted['decode_head.fusion_conv.bn.num_batches_tracked'] = torch.tensor(0)
        outside = [key for key in state_dict
                   if not key.startswith((self.encoder_prefix, self.decoder_prefix))]
        if outside:
            raise ValueError(f'keys outside the encoder and decoder: {", ".join(sorted(outside)[:8])}')

        channels = converted['decode_head.fusion_conv.conv.weight'].shape[0]
        if channels != OFFICIAL_DECODER_CHANNELS[arch]:
            raise ValueError(f'the decoder is {channels} wide; the official MiT-{arch.upper()} configs use '
                             f'{OFFICIAL_DECODER_CHANNELS[arch]}')
        num_classes = converted['decode_head.conv_seg.weight'].shape[0]
        config = official_config(arch, num_classes)
        dataset = DATASET_CONFIGS[num_classes][0]
        notes.append(f'MiT-{arch.upper()} encoder ({extraction.layout} layout), official decoder of width '
                     f'{channels}, {num_classes} classes ({dataset})')
        notes.extend(self._layer_norm_notes())
        if dataset == 'ADE20K' and arch == 'b5':
            notes.append('B5 ADE20K models published at 640x640 run with the 512x512 config unchanged; set '
                         'crop_size (640, 640) and the test Resize scale (2048, 640) to match their recipe')
        return ConversionResult(state_dict=converted, config=config, notes=notes)

    def _layer_norm_notes(self) -> List[str]:
        return []


class SegformerNVlabsConverter(_SegformerConverter):
    """Segmentation checkpoints of the official NVlabs SegFormer code."""

    name = 'segformer-nvlabs'
    description = ('NVlabs SegFormer segmentation checkpoint (backbone.patch_embed1..4, backbone.block1..4, '
                   'decode_head.linear_c1..4 / linear_fuse / linear_pred)')
    signature = ('backbone.patch_embed1.proj.weight', 'decode_head.linear_fuse.conv.weight',
                 'decode_head.linear_pred.weight')
    encoder_prefix = 'backbone.'
    ignored_decoder_keys = ('conv_seg.weight', 'conv_seg.bias')

    stage_linear, first_stage = 'linear_c{stage}.proj', 1
    fuse_conv, fuse_bn, classifier = 'linear_fuse.conv', 'linear_fuse.bn', 'linear_pred'

    def _layer_norm_notes(self) -> List[str]:
        return ['NVlabs uses LayerNorm eps 1e-5 in the patch embeddings and attention reductions where the '
                'config (as mmseg) uses 1e-6; the effect on the logits is far below 1e-3 relative']


class SegformerHFConverter(_SegformerConverter):
    """``transformers``' ``SegformerForSemanticSegmentation`` checkpoints."""

    name = 'segformer-huggingface'
    description = ('Hugging Face SegformerForSemanticSegmentation (segformer.encoder.*, decode_head.linear_c.*, '
                   'decode_head.linear_fuse, decode_head.batch_norm, decode_head.classifier); a model directory '
                   'with config.json, or its model.safetensors / pytorch_model.bin')
    signature = ('segformer.encoder.patch_embeddings.0.proj.weight', 'decode_head.linear_fuse.weight',
                 'decode_head.classifier.weight')
    encoder_prefix = 'segformer.'

    stage_linear, first_stage = 'linear_c.{stage}.proj', 0
    fuse_conv, fuse_bn, classifier = 'linear_fuse', 'batch_norm', 'classifier'

    def _layer_norm_notes(self) -> List[str]:
        return ['transformers uses LayerNorm eps 1e-5 where the config (as mmseg and NVlabs) uses 1e-6; the '
                'effect on the logits is far below 1e-3 relative']


register_converter(SegformerNVlabsConverter())
register_converter(SegformerHFConverter())
