"""Loading a pretrained MiT encoder of any published layout: ``init_cfg=dict(type='Pretrained', ...)``.

The layouts and their mapping onto mmseg's keys are in :mod:`mmseg_ext.checkpoint.mit_layouts`; files are
read by :mod:`mmseg_ext.checkpoint.reading`.
"""
import os.path as osp
from typing import Mapping, Optional

from torch import nn

from ..errors import InvalidArgumentError
from .mit_layouts import EncoderExtraction, describe_key_mismatch, extract_mit_encoder
from .reading import read_hf_config, read_state_dict, sample_keys

__all__ = ['load_mit_pretrained']


def load_mit_pretrained(model: nn.Module, checkpoint: str, prefix: Optional[str] = None,
                        map_location: Optional[str] = 'cpu') -> EncoderExtraction:
    """Load a pretrained MiT encoder of any published layout into ``model`` (strictly).

    Args:
        model: A MixVisionTransformer (mmseg's or this plugin's; their keys are the same).
        checkpoint: A ``.pth`` file or URL, a ``.safetensors`` file, or a Hugging Face model directory.
        prefix: Optional sub-module prefix to take from the checkpoint first (e.g. ``'backbone.'``),
            as in mmengine's ``Pretrained`` init; the layout is detected either way.
        map_location: Device the checkpoint is read onto.

    Returns:
        What was found; ``dropped`` lists head keys that were ignored.

    Raises:
        ValueError: if the checkpoint is in no known layout, or its encoder does not fit ``model``
            (the message names missing, unexpected and mis-shaped keys).
    """
    if osp.isdir(checkpoint) or checkpoint.endswith('.safetensors'):
        _check_hf_config_fits(read_hf_config(checkpoint), model, checkpoint)
    state_dict = read_state_dict(checkpoint, map_location=map_location)
    if prefix:
        selected = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        if not selected:
            raise InvalidArgumentError(f"no key of {checkpoint} starts with prefix={prefix!r} "
                                       f'(first keys: {sample_keys(state_dict, 4)})')
        state_dict = selected
    target = model.state_dict()
    try:
        extraction = extract_mit_encoder(state_dict, expected_keys=list(target))
    except ValueError as error:
        raise ValueError(f'{checkpoint}: {error}') from None
    converted = extraction.state_dict
    mismatched = [f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}'
                  for key, value in converted.items() if key in target and value.shape != target[key].shape]
    if set(converted) != set(target) or extraction.unused or mismatched:
        message = describe_key_mismatch(converted, list(target), extraction.unused)
        if mismatched:
            message += f' Shapes differ for {len(mismatched)} key(s): {"; ".join(mismatched[:4])}' + (
                ' ...' if len(mismatched) > 4 else '') + ' (a different MiT variant?).'
        raise ValueError(f'{checkpoint} holds a MiT encoder in the {extraction.layout} layout that does not '
                         f'fit this model. {message}')
    model.load_state_dict(converted, strict=True)
    return extraction


def _check_hf_config_fits(config: Optional[Mapping], model: nn.Module, checkpoint: str) -> None:
    """Compare a Hugging Face SegFormer ``config.json`` with ``model``: attention heads and the like do not
    show in the weights, so a mismatch there would load without error and compute something else."""
    if not isinstance(config, Mapping) or config.get('model_type') != 'segformer':
        return
    expected = dict(num_attention_heads=list(model.num_heads), sr_ratios=list(model.sr_ratios),
                    patch_sizes=list(model.patch_sizes), strides=list(model.strides),
                    depths=list(model.num_layers), num_encoder_blocks=model.num_stages)
    wrong = {name: (config[name], value) for name, value in expected.items()
             if name in config and config[name] != value}
    if wrong:
        detail = '; '.join(f'{name}={got!r} (model: {want!r})' for name, (got, want) in wrong.items())
        raise ValueError(f'{checkpoint}: its config.json describes another MiT than this model: {detail}')
