"""Published key layouts of the SegFormer encoder (MiT) and their mapping onto mmseg's layout.

mmseg's layout (``layers.{stage}.{0: patch embed, 1: blocks, 2: norm}``) is this plugin's layout too.
Two other layouts are published:

* ``nvlabs``: the official NVlabs code (ImageNet ``mit_b*.pth`` files, and the ``backbone.`` part of its
  segmentation checkpoints): ``patch_embed{s}``, ``block{s}.{j}.attn.q/kv/proj``, ``mlp.fc1/dwconv/fc2``
  (Linear layers), ``norm{s}``.
* ``huggingface``: ``transformers``' ``SegformerModel`` (``encoder.*``) and, under ``segformer.``,
  ``SegformerForImageClassification`` / ``SegformerForSemanticSegmentation``: ``patch_embeddings.{i}``,
  ``block.{i}.{j}.attention.self.query/key/value``, ``mlp.dense1/dwconv/dense2``, ``layer_norm.{i}``.

Both map to mmseg's layout by renaming, stacking q, k and v into ``in_proj_weight``/``in_proj_bias``
(mmseg keeps ``nn.MultiheadAttention``'s layout) and reshaping Linear weights into 1x1 conv weights.
The same functions serve the backbone's pretrained loading (:mod:`mmseg_ext.checkpoint.mit_pretrained`)
and ``tools/model_converters/convert_checkpoint.py``.
"""
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .reading import sample_keys

__all__ = ['ENCODER_LAYOUTS', 'EncoderExtraction', 'nvlabs_to_mmseg_encoder', 'hf_to_mmseg_encoder',
           'extract_mit_encoder', 'describe_key_mismatch', 'linear_to_conv1x1']

StateDict = Dict[str, Tensor]


def _stack_qkv(parts: Dict[Tuple[int, int, str], Dict[str, Tensor]], order: Sequence[str],
               out: StateDict, unused: List[str], names: Dict[Tuple[int, int, str, str], str]) -> None:
    """Concatenate the q/k/v (or q/kv) pieces of every block into mmseg's ``in_proj_*`` tensors.

    A block whose pieces are incomplete is not converted; its pieces are reported as unused.
    """
    for (stage, block, param), pieces in parts.items():
        if all(name in pieces for name in order):
            out[f'layers.{stage}.1.{block}.attn.attn.in_proj_{param}'] = torch.cat(
                [pieces[name] for name in order], dim=0)
        else:
            unused.extend(names[(stage, block, param, name)] for name in pieces)


def linear_to_conv1x1(weight: Tensor) -> Tensor:
    """A ``Linear`` weight ``(out, in)`` as the weight ``(out, in, 1, 1)`` of the equivalent 1x1 conv."""
    return weight.reshape(*weight.shape, 1, 1) if weight.dim() == 2 else weight


# One row per encoder tensor: mmseg's key, the NVlabs key, the Hugging Face key, and the value transform.
# Placeholders: {stage} (0-based in mmseg and Hugging Face keys, 1-based in NVlabs keys), {block}, {i}
# (1 or 2: the block's two LayerNorms) and {param} (weight or bias). q, k and v are stacked separately.
_KEY_TABLE: List[Tuple[str, str, str, Callable[[Tensor], Tensor]]] = [
    ('layers.{stage}.0.projection.{param}', 'patch_embed{stage}.proj.{param}',
     'encoder.patch_embeddings.{stage}.proj.{param}', lambda t: t),
    ('layers.{stage}.0.norm.{param}', 'patch_embed{stage}.norm.{param}',
     'encoder.patch_embeddings.{stage}.layer_norm.{param}', lambda t: t),
    ('layers.{stage}.1.{block}.norm{i}.{param}', 'block{stage}.{block}.norm{i}.{param}',
     'encoder.block.{stage}.{block}.layer_norm_{i}.{param}', lambda t: t),
    ('layers.{stage}.1.{block}.attn.attn.out_proj.{param}', 'block{stage}.{block}.attn.proj.{param}',
     'encoder.block.{stage}.{block}.attention.output.dense.{param}', lambda t: t),
    ('layers.{stage}.1.{block}.attn.sr.{param}', 'block{stage}.{block}.attn.sr.{param}',
     'encoder.block.{stage}.{block}.attention.self.sr.{param}', lambda t: t),
    ('layers.{stage}.1.{block}.attn.norm.{param}', 'block{stage}.{block}.attn.norm.{param}',
     'encoder.block.{stage}.{block}.attention.self.layer_norm.{param}', lambda t: t),
    ('layers.{stage}.1.{block}.ffn.layers.0.{param}', 'block{stage}.{block}.mlp.fc1.{param}',
     'encoder.block.{stage}.{block}.mlp.dense1.{param}', linear_to_conv1x1),
    ('layers.{stage}.1.{block}.ffn.layers.1.{param}', 'block{stage}.{block}.mlp.dwconv.dwconv.{param}',
     'encoder.block.{stage}.{block}.mlp.dwconv.dwconv.{param}', lambda t: t),
    ('layers.{stage}.1.{block}.ffn.layers.4.{param}', 'block{stage}.{block}.mlp.fc2.{param}',
     'encoder.block.{stage}.{block}.mlp.dense2.{param}', linear_to_conv1x1),
    ('layers.{stage}.2.{param}', 'norm{stage}.{param}', 'encoder.layer_norm.{stage}.{param}', lambda t: t),
]
# The attention inputs: NVlabs stores q and a stacked kv, Hugging Face query, key and value.
_NVLABS_QKV = 'block{stage}.{block}.attn.{piece}.{param}'
_HF_QKV = 'encoder.block.{stage}.{block}.attention.self.{piece}.{param}'

_PLACEHOLDER_PATTERNS = {'stage': r'\d+', 'block': r'\d+', 'i': '[12]', 'param': 'weight|bias'}


def _key_pattern(template: str, pieces: Sequence[str] = ()) -> re.Pattern:
    """A template such as ``'block{stage}.{block}.norm{i}.{param}'`` as a regex with one named group a field."""
    patterns = dict(_PLACEHOLDER_PATTERNS, piece='|'.join(pieces))
    return re.compile(re.sub(r'\\\{(\w+)\\\}', lambda m: f'(?P<{m[1]}>{patterns[m[1]]})', re.escape(template)))


def _convert(state_dict: Mapping[str, Tensor], column: int, qkv_template: str, qkv_order: Sequence[str],
             stage_offset: int) -> Tuple[StateDict, List[str]]:
    """Map one published layout (``column`` of :data:`_KEY_TABLE`) onto mmseg's keys."""
    rules = [(_key_pattern(row[column]), row[0], row[3]) for row in _KEY_TABLE]
    qkv_pattern = _key_pattern(qkv_template, qkv_order)
    out: StateDict = {}
    unused: List[str] = []
    qkv_parts: Dict[Tuple[int, int, str], Dict[str, Tensor]] = defaultdict(dict)
    qkv_names: Dict[Tuple[int, int, str, str], str] = {}
    for key, value in state_dict.items():
        match = qkv_pattern.fullmatch(key)
        if match:
            stage, block, piece, param = (int(match['stage']) - stage_offset, int(match['block']),
                                          match['piece'], match['param'])
            qkv_parts[(stage, block, param)][piece] = value
            qkv_names[(stage, block, param, piece)] = key
            continue
        for pattern, target, transform in rules:
            match = pattern.fullmatch(key)
            if match:
                fields = match.groupdict()
                fields['stage'] = int(fields['stage']) - stage_offset
                out[target.format(**fields)] = transform(value)
                break
        else:
            unused.append(key)
    _stack_qkv(qkv_parts, qkv_order, out, unused, qkv_names)
    return out, unused


def nvlabs_to_mmseg_encoder(state_dict: Mapping[str, Tensor]) -> Tuple[StateDict, List[str]]:
    """Map an NVlabs MiT state dict (no ``backbone.`` prefix) onto mmseg's keys.

    Returns:
        The converted tensors and the keys that are not part of the NVlabs encoder layout.
    """
    return _convert(state_dict, 1, _NVLABS_QKV, ('q', 'kv'), stage_offset=1)


def hf_to_mmseg_encoder(state_dict: Mapping[str, Tensor]) -> Tuple[StateDict, List[str]]:
    """Map a Hugging Face ``SegformerModel`` state dict (``encoder.*`` keys) onto mmseg's keys.

    Returns:
        The converted tensors and the keys that are not part of the Hugging Face encoder layout.
    """
    return _convert(state_dict, 2, _HF_QKV, ('query', 'key', 'value'), stage_offset=0)


def _mmseg_identity(state_dict: Mapping[str, Tensor]) -> Tuple[StateDict, List[str]]:
    encoder = {key: value for key, value in state_dict.items() if re.match(r'layers\.\d+\.', key)}
    return encoder, [key for key in state_dict if key not in encoder]


@dataclass(frozen=True)
class _Layout:
    description: str
    signature: str  # a key every checkpoint of this layout has (relative to the encoder)
    prefixes: Tuple[str, ...]  # where the encoder sits in the published files ('' = top level)
    to_mmseg: Callable[[Mapping[str, Tensor]], Tuple[StateDict, List[str]]]
    head_prefixes: Tuple[str, ...]  # top-level keys of non-encoder parts that are dropped silently

ENCODER_LAYOUTS: Dict[str, _Layout] = {
    'mmseg': _Layout('mmseg 1.x MixVisionTransformer (converted mit_b*.pth, or backbone.* of a segmentor)',
                     'layers.0.0.projection.weight', ('', 'backbone.'), _mmseg_identity,
                     ('decode_head.', 'auxiliary_head.', 'data_preprocessor.')),
    'nvlabs': _Layout('official NVlabs SegFormer MiT (ImageNet mit_b*.pth, or backbone.* of a segmentation '
                      'checkpoint)', 'patch_embed1.proj.weight', ('', 'backbone.'), nvlabs_to_mmseg_encoder,
                      ('head.', 'decode_head.', 'auxiliary_head.')),
    'huggingface': _Layout('Hugging Face SegformerModel / SegformerForImageClassification / '
                           'SegformerForSemanticSegmentation', 'encoder.patch_embeddings.0.proj.weight',
                           ('', 'segformer.'), hf_to_mmseg_encoder, ('classifier.', 'decode_head.')),
}


@dataclass
class EncoderExtraction:
    """The encoder found in a checkpoint, in mmseg's layout.

    Attributes:
        layout: Name of the source layout (a key of :data:`ENCODER_LAYOUTS`).
        prefix: Where the encoder sat in the checkpoint (``''``, ``'backbone.'`` or ``'segformer.'``).
        state_dict: The encoder's tensors under mmseg's keys.
        dropped: Keys of recognised non-encoder parts (classifier or decode heads), not converted.
        unused: Keys under the encoder's prefix that the layout does not know (reported as extra).
    """
    layout: str
    prefix: str
    state_dict: StateDict
    dropped: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)


def _extract_with(state_dict: Mapping[str, Tensor], name: str, prefix: str) -> EncoderExtraction:
    layout = ENCODER_LAYOUTS[name]
    inner: StateDict = {}
    dropped: List[str] = []
    outside: List[str] = []
    for key, value in state_dict.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if rest.startswith(layout.head_prefixes):
                dropped.append(key)
            else:
                inner[rest] = value
        elif key.startswith(layout.head_prefixes):
            dropped.append(key)
        else:
            outside.append(key)
    converted, unused = layout.to_mmseg(inner)
    return EncoderExtraction(name, prefix, converted, dropped, [prefix + key for key in unused] + outside)


def extract_mit_encoder(state_dict: Mapping[str, Tensor],
                        expected_keys: Optional[Sequence[str]] = None) -> EncoderExtraction:
    """Find the MiT encoder in ``state_dict`` (any published layout) and map it onto mmseg's keys.

    Args:
        state_dict: A raw state dict (already unwrapped from ``state_dict``/``model`` entries).
        expected_keys: The target model's keys; only used to explain a failure.

    Raises:
        ValueError: if ``state_dict`` is in none of the layouts. The message names, for the layout the
            file comes closest to, the keys it lacks and the keys it has in excess.
    """
    for name, layout in ENCODER_LAYOUTS.items():
        for prefix in layout.prefixes:
            if prefix + layout.signature in state_dict:
                return _extract_with(state_dict, name, prefix)
    # No signature key: explain against the layout the file comes closest to.
    candidates = []
    for name, layout in ENCODER_LAYOUTS.items():
        for prefix in layout.prefixes:
            extraction = _extract_with(state_dict, name, prefix)
            candidates.append((len(extraction.state_dict), name, prefix, extraction))
    _, name, prefix, extraction = max(candidates, key=lambda item: item[0])
    known = '; '.join(f'{key}: {layout.description}' for key, layout in ENCODER_LAYOUTS.items())
    detail = ''
    if expected_keys is not None:
        detail = ' ' + describe_key_mismatch(extraction.state_dict, expected_keys, extraction.unused)
    raise ValueError(f'the checkpoint holds no MiT encoder in a known layout (known: {known}). '
                     f'It comes closest to the {name} layout{f" under {prefix!r}" if prefix else ""}.'
                     f'{detail}')


def describe_key_mismatch(state_dict: Mapping[str, Tensor], expected_keys: Sequence[str],
                          unused: Sequence[str] = ()) -> str:
    """A sentence naming the keys ``state_dict`` lacks and has in excess compared with ``expected_keys``."""
    expected = set(expected_keys)
    missing = sorted(expected - set(state_dict))
    extra = sorted(set(state_dict) - expected) + sorted(unused)
    parts = []
    if missing:
        parts.append(f'It lacks {len(missing)} key(s) the model needs: {sample_keys(missing)}.')
    if extra:
        parts.append(f'It has {len(extra)} key(s) the model does not have: {sample_keys(extra)}.')
    return ' '.join(parts) if parts else 'Its keys match the model.'
