"""Whether a checkpoint's weights fit a model, checked before evaluation, inference, export or benchmarking.

mmengine loads checkpoints non-strictly and only logs what did not fit, so a checkpoint of another model
gives a randomly initialised network and a plausible-looking score. :func:`load_weights` (and
:func:`check_weights` for callers that read the checkpoint themselves) compare every tensor's name and
shape with the model's first and refuse a mismatch with :class:`WeightsMismatchError`: one line with the
counts, a few examples of each kind and, when recognisable, the likely cause (another model family, another
MiT variant, another class count, a backbone-only file, a published layout that
``tools/model_converters/convert_checkpoint.py`` converts). ``allow_partial=True`` loads what fits, for those who
mean it.

Reading the file goes through mmengine's loader, so unreadable files raise
:class:`mmseg_ext.checkpoint.safe_unpickler.CheckpointFileError` (not a checkpoint, damaged, unsafe). Tools catch
:data:`CHECKPOINT_ERRORS` and print the message as one line.
"""
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import load_state_dict

from ..mit_arch import infer_mit_arch
from .reading import read_checkpoint_file, strip_prefixes, unwrap_state_dict
from .safe_unpickler import CheckpointFileError

__all__ = ['WeightsMismatchError', 'WeightsSummary', 'CHECKPOINT_ERRORS', 'checkpoint_state_dict', 'compare_weights',
           'check_weights', 'apply_weights', 'load_weights', 'load_weights_strict', 'log_weights_summary',
           'model_to_load']

#: How many keys of each kind a message names.
EXAMPLES = 3
# Counters rather than weights: torch's BatchNorm fills a missing one in, so its absence is no mismatch.
_COUNTER_SUFFIX = 'num_batches_tracked'
# Backbone families by a key only their state dicts have (segmentor keys, 'backbone.' prefix).
_BACKBONE_FINGERPRINTS = (
    ('ERFNet', re.compile(r'^backbone\.encoder\.\d+\.convs_layers\.')),
    ('MiT (SegFormer)', re.compile(r'^backbone\.layers\.\d+\.1\.\d+\.attn\.')),
    ('HRNet', re.compile(r'^backbone\.stage\d\.\d+\.branches\.')),
    ('ResNet', re.compile(r'^backbone\.layer\d\.\d+\.conv\d\.')),
    ('Swin', re.compile(r'^backbone\.stages\.\d+\.blocks\.\d+\.attn\.w_msa\.')),
    ('ViT', re.compile(r'^backbone\.layers\.\d+\.attn\.attn\.')),
    ('MobileNetV2', re.compile(r'^backbone\.layer\d\.\d+\.conv\.\d+\.conv\.')),
)
_CLASSIFIER = re.compile(r'^(?:decode_head|auxiliary_head)(?:\.\d+)?\.conv_seg\.(?:weight|bias)$')


class WeightsMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model (missing, unexpected or of another shape)."""


#: Exceptions the tools report as one line (``error: <message>``) and exit 2 on.
CHECKPOINT_ERRORS = (CheckpointFileError, WeightsMismatchError, FileNotFoundError)


@dataclass
class WeightsSummary:
    """How a checkpoint's tensors fit a model's state dict.

    Attributes:
        source: The checkpoint's path, for messages.
        model_tensors: Number of tensors in the model's state dict.
        matched: Tensors present in both with the same shape.
        missing: Model keys the checkpoint lacks (BatchNorm counters not counted).
        unexpected: Checkpoint keys the model does not have.
        shape_mismatches: ``(key, checkpoint shape, model shape)`` for keys in both with other shapes.
        likely_cause: A sentence on why, when recognisable; empty otherwise.
    """
    source: str
    model_tensors: int
    matched: int
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatches: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    likely_cause: str = ''

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def describe(self) -> str:
        """One line: what fits and, for a mismatch, the counts, examples and likely cause."""
        if self.fits:
            return f'weights: {self.source} fits the model (all {self.model_tensors} tensors, names and shapes)'
        parts = []
        if self.missing:
            parts.append(f'{len(self.missing)} missing ({_examples(self.missing)})')
        if self.unexpected:
            parts.append(f'{len(self.unexpected)} unexpected ({_examples(self.unexpected)})')
        if self.shape_mismatches:
            shown = [f'{key} {list(theirs)} in the checkpoint, {list(ours)} in the model'
                     for key, theirs, ours in self.shape_mismatches[:EXAMPLES]]
            more = ', ...' if len(self.shape_mismatches) > EXAMPLES else ''
            parts.append(f'{len(self.shape_mismatches)} of another shape ({", ".join(shown)}{more})')
        cause = f'; likely cause: {self.likely_cause}' if self.likely_cause else ''
        return (f'weights do not fit the model: {self.source} matches {self.matched} of the model\'s '
                f'{self.model_tensors} tensors; {"; ".join(parts)}{cause}')


def _examples(keys: List[str]) -> str:
    return ', '.join(keys[:EXAMPLES]) + (', ...' if len(keys) > EXAMPLES else '')


def model_to_load(model: nn.Module) -> nn.Module:
    """The module whose state dict a checkpoint holds: inside DDP-style wrappers and test-time-augmentation
    models (mmengine loads into the same one)."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def checkpoint_state_dict(checkpoint: Any) -> Dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint, unwrapped as every entry point of the plugin unwraps them
    (:func:`mmseg_ext.checkpoint.reading.unwrap_state_dict` and ``strip_prefixes``: a ``state_dict``/``model``
    entry, ``module.`` and ``model.`` wrapper prefixes)."""
    if not isinstance(checkpoint, Mapping):
        raise WeightsMismatchError(f'the checkpoint holds a {type(checkpoint).__name__}, not a dict of weights')
    state = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state, Mapping):
        raise WeightsMismatchError(f"the checkpoint's state_dict is a {type(state).__name__}, not a dict of weights")
    tensors = {key: value for key, value in unwrap_state_dict(checkpoint).items() if isinstance(value, torch.Tensor)}
    return strip_prefixes(tensors)


def compare_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = 'the checkpoint'
                    ) -> WeightsSummary:
    """Compare names and shapes of ``state_dict`` with ``model``'s (nothing is loaded)."""
    expected = {key: tuple(value.shape) for key, value in model_to_load(model).state_dict().items()}
    given = {key: tuple(value.shape) for key, value in state_dict.items()}
    missing = sorted(key for key in expected if key not in given and not key.endswith(_COUNTER_SUFFIX))
    unexpected = sorted(key for key in given if key not in expected)
    other_shape = sorted((key, given[key], expected[key]) for key in expected
                         if key in given and given[key] != expected[key])
    summary = WeightsSummary(source=source, model_tensors=len(expected),
                             matched=sum(key in given and given[key] == shape for key, shape in expected.items()),
                             missing=missing, unexpected=unexpected, shape_mismatches=other_shape)
    if not summary.fits:
        summary.likely_cause = _likely_cause(expected, given, summary)
    return summary


def check_weights(model: nn.Module, checkpoint: Any, source: str = 'the checkpoint', allow_partial: bool = False,
                  partial_flag: Optional[str] = '--allow-partial-weights') -> WeightsSummary:
    """Compare a loaded checkpoint (or state dict) with ``model`` without loading it.

    Args:
        partial_flag: The caller's option that allows a partial load, named in the error; None if it has none.

    Raises:
        WeightsMismatchError: if anything does not fit and ``allow_partial`` is False.
    """
    return _checked(model, checkpoint_state_dict(checkpoint), source, allow_partial, partial_flag)


def _checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, allow_partial: bool,
             partial_flag: Optional[str]) -> WeightsSummary:
    summary = compare_weights(model, state_dict, source)
    if not summary.fits and not allow_partial:
        hint = f' (pass {partial_flag} to load only the tensors that fit)' if partial_flag else ''
        raise WeightsMismatchError(summary.describe() + hint)
    return summary


def apply_weights(model: nn.Module, checkpoint: Any, source: str = 'the checkpoint', allow_partial: bool = False,
                  partial_flag: Optional[str] = '--allow-partial-weights') -> WeightsSummary:
    """Check a loaded checkpoint against ``model`` (see :func:`check_weights`), then load it into ``model``
    with the same unwrapping, so what was checked is what is loaded."""
    state_dict = checkpoint_state_dict(checkpoint)
    summary = _checked(model, state_dict, source, allow_partial, partial_flag)
    # strict=False also with a full fit: BatchNorm counters may be absent from older files.
    load_state_dict(model_to_load(model), state_dict, strict=False)
    return summary


def log_weights_summary(summary: WeightsSummary) -> None:
    """The summary's line in mmengine's current log: INFO when everything fits, WARNING otherwise."""
    print_log(summary.describe(), logger='current', level=logging.INFO if summary.fits else logging.WARNING)


def load_weights(model: nn.Module, path: str, allow_partial: bool = False, map_location: Optional[str] = 'cpu',
                 partial_flag: Optional[str] = '--allow-partial-weights') -> WeightsSummary:
    """Read the checkpoint at ``path``, check it fits ``model``, then load it as mmengine's runner does.

    With ``allow_partial``, tensors that fit are loaded and the rest keep the model's values.

    Raises:
        CheckpointFileError: the file is not a checkpoint, is damaged, or is unsafe.
        FileNotFoundError: ``path`` does not exist.
        WeightsMismatchError: the weights do not fit and ``allow_partial`` is False.
    """
    return apply_weights(model, read_checkpoint_file(path, map_location=map_location), path, allow_partial,
                         partial_flag)


def load_weights_strict(model: nn.Module, path: str) -> Dict[str, Any]:
    """Load the checkpoint at ``path`` into ``model`` only if every tensor fits (no partial load is offered);
    returns the checkpoint's ``meta`` (empty if it has none), for callers that record where weights came from.

    Raises:
        CheckpointFileError: not a checkpoint, damaged or unsafe (:mod:`mmseg_ext.checkpoint.safe_unpickler`).
        FileNotFoundError: ``path`` does not exist.
        WeightsMismatchError: naming the missing, unexpected and mis-shaped tensors and the likely cause.
    """
    checkpoint = read_checkpoint_file(path, map_location='cpu')
    apply_weights(model, checkpoint, path, partial_flag=None)
    return (checkpoint.get('meta') if isinstance(checkpoint, dict) else None) or {}


def _likely_cause(expected: Mapping[str, Tuple[int, ...]], given: Mapping[str, Tuple[int, ...]],
                  summary: WeightsSummary) -> str:
    """A sentence naming the recognisable reason for a mismatch, or ''."""
    for diagnose in (_published_layout, _backbone_only, _other_family, _other_mit_variant, _other_class_count):
        cause = diagnose(expected, given, summary)
        if cause:
            return cause
    return ''


def _shaped(shapes: Mapping[str, Tuple[int, ...]], prefix: str = '') -> Dict[str, torch.Tensor]:
    """Storage-free tensors of the given shapes (for detectors that read shapes), ``prefix`` removed."""
    return {key[len(prefix):]: torch.empty(shape, device='meta') for key, shape in shapes.items()
            if key.startswith(prefix)}


def _published_layout(expected, given, summary) -> str:
    from ..converters import registered_converters
    stripped = strip_prefixes(_shaped(given))
    for converter in registered_converters().values():
        try:
            matches = converter.matches(stripped)
        except Exception:  # a converter's detection needs tensors: no verdict from it
            matches = False
        if matches:
            return (f'the file is still in the published {converter.name} layout; convert it with '
                    f'`python tools/model_converters/convert_checkpoint.py {summary.source} CONVERTED.pth` '
                    'and use CONVERTED.pth with the config that command prints')
    return ''


def _backbone_only(expected, given, summary) -> str:
    backbone = {key for key in expected if key.startswith('backbone.')}
    head_keys = [key for key in expected if not key.startswith('backbone.') and not key.endswith(_COUNTER_SUFFIX)]
    unprefixed = {f'backbone.{key}' for key in given}
    published_encoder = any(key.startswith(('patch_embed1.', 'block1.0.', 'encoder.patch_embeddings.'))
                            for key in given)
    holds_backbone_only = (all(key.startswith('backbone.') for key in given) and given
                           and set(head_keys) <= set(summary.missing))
    if backbone and (published_encoder or len(unprefixed & backbone) >= len(backbone) // 2 or holds_backbone_only):
        return ("a backbone-only (pretrained encoder) file: it has no decode head, so it can start a training "
                "run (model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...)) but not be evaluated")
    return ''


def _family(keys) -> str:
    for name, pattern in _BACKBONE_FINGERPRINTS:
        if any(pattern.match(key) for key in keys):
            return name
    return ''


def _other_family(expected, given, summary) -> str:
    theirs, ours = _family(given), _family(expected)
    if theirs and ours and theirs != ours:
        return f"another model family: the checkpoint's backbone is {theirs}, the model's {ours}"
    if not summary.matched and not theirs:
        return 'another model: not one tensor name and shape in common with this config\'s model'
    return ''


def _other_mit_variant(expected, given, summary) -> str:
    def arch(shapes: Mapping[str, Tuple[int, ...]]) -> str:
        try:
            return infer_mit_arch(_shaped(shapes, 'backbone.'))
        except (ValueError, KeyError):
            return ''

    if _family(given) == _family(expected) == 'MiT (SegFormer)':
        theirs, ours = arch(given), arch(expected)
        if theirs and ours and theirs != ours:
            return (f'another MiT variant: the checkpoint is MiT-{theirs.upper()}, the model MiT-{ours.upper()} '
                    f'(use a mit-{theirs} config)')
    return ''


def _other_class_count(expected, given, summary) -> str:
    classifiers = [(key, theirs, ours) for key, theirs, ours in summary.shape_mismatches if _CLASSIFIER.match(key)]
    if classifiers and len(classifiers) == len(summary.shape_mismatches) and not summary.missing \
            and not summary.unexpected:
        _, theirs, ours = classifiers[0]
        return (f'another class count: the checkpoint predicts {theirs[0]} classes, the model {ours[0]} (a model '
                'trained on another dataset; use its config, or set num_classes to fine-tune with load_from)')
    return ''
