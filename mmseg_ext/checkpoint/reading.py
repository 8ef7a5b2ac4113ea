"""Reading weights from the file formats published checkpoints come in.

* ``.pth`` / ``.pt`` / ``.bin`` files and URLs go through mmengine's ``CheckpointLoader`` (which keeps
  ``torch.load``'s ``weights_only`` safety),
* ``.safetensors`` files through ``safetensors``,
* a Hugging Face model directory (``config.json`` next to ``model.safetensors``, a sharded
  ``model.safetensors.index.json`` or ``pytorch_model.bin``) through the two above.

The architecture of a converted model is read from the tensor shapes. Values of a Hugging Face
``config.json`` that the shapes do not show (attention heads, say) are checked by functions model families
register with :func:`register_hf_config_check`; ``tools/model_converters/convert_checkpoint.py`` runs them through
:func:`check_hf_source_config` and refuses a config they cannot honour.
"""
import json
import os.path as osp
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

import torch

__all__ = ['read_checkpoint', 'read_checkpoint_file', 'read_state_dict', 'read_hf_config', 'unwrap_state_dict',
           'strip_prefixes', 'sample_keys', 'is_hf_model_dir', 'register_hf_config_check', 'check_hf_source_config',
           'BN_STATE_ENTRIES']

#: The state-dict entries of a ``BatchNorm`` module, in PyTorch's order.
BN_STATE_ENTRIES = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')

# Hugging Face ``model_type`` -> check of a config.json's values that the weights alone do not show.
_HF_CONFIG_CHECKS: Dict[str, Callable[[Mapping[str, Any]], None]] = {}


def register_hf_config_check(model_type: str, check: Callable[[Mapping[str, Any]], None]) -> None:
    """Have :func:`check_hf_source_config` run ``check(config)`` on the ``config.json`` of Hugging Face
    sources whose ``model_type`` is ``model_type``; ``check`` raises ``ValueError`` for configs it cannot
    honour (the converters register checks for what the repository configs build)."""
    _HF_CONFIG_CHECKS[model_type] = check

_HF_WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin')


def is_hf_model_dir(path: str) -> bool:
    """Whether ``path`` is a directory holding a Hugging Face ``config.json`` and weights."""
    return (osp.isdir(path) and osp.isfile(osp.join(path, 'config.json'))
            and any(osp.isfile(osp.join(path, name)) for name in _HF_WEIGHT_FILES))


def read_hf_config(path: str) -> Optional[Dict[str, Any]]:
    """The ``config.json`` of a Hugging Face model directory (or of a weights file's directory), if any."""
    directory = path if osp.isdir(path) else osp.dirname(path)
    config_path = osp.join(directory, 'config.json')
    if not osp.isfile(config_path):
        return None
    with open(config_path, encoding='utf-8') as file:
        return json.load(file)


def _read_safetensors(path: str, map_location: str) -> Dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f'reading {path} needs the safetensors package: pip install safetensors') from error
    return load_file(path, device=str(map_location or 'cpu'))


def read_checkpoint_file(path: str, map_location: Optional[str] = 'cpu') -> Any:
    """What a ``.pth``-style file or URL holds, read as mmengine's runner reads it (``CheckpointLoader``; local
    files go through :mod:`mmseg_ext.checkpoint.safe_unpickler`, see :mod:`mmseg_ext.compat`)."""
    from mmengine.runner import CheckpointLoader
    return CheckpointLoader.load_checkpoint(path, map_location=map_location)


def _read_hf_dir(directory: str, map_location: str) -> Dict[str, torch.Tensor]:
    single = osp.join(directory, 'model.safetensors')
    if osp.isfile(single):
        return _read_safetensors(single, map_location)
    index = osp.join(directory, 'model.safetensors.index.json')
    if osp.isfile(index):
        with open(index, encoding='utf-8') as file:
            shards = sorted(set(json.load(file)['weight_map'].values()))
        state_dict: Dict[str, torch.Tensor] = {}
        for shard in shards:
            state_dict.update(_read_safetensors(osp.join(directory, shard), map_location))
        return state_dict
    binary = osp.join(directory, 'pytorch_model.bin')
    if osp.isfile(binary):
        return read_checkpoint_file(binary, map_location)
    raise FileNotFoundError(f'{directory} has none of the Hugging Face weight files {", ".join(_HF_WEIGHT_FILES)}')


def read_checkpoint(source: str, map_location: Optional[str] = 'cpu') -> Any:
    """Read a checkpoint from a file, a URL or a Hugging Face model directory.

    Args:
        source: A ``.pth``-style file or URL (anything mmengine's ``CheckpointLoader`` reads), a
            ``.safetensors`` file, or a Hugging Face model directory.
        map_location: Device the tensors are loaded onto.

    Returns:
        What the file holds: a state dict, or a dict wrapping one (see :func:`unwrap_state_dict`).
    """
    if osp.isdir(source):
        if not is_hf_model_dir(source):
            raise FileNotFoundError(f'{source} is a directory but not a Hugging Face model directory '
                                    f'(config.json plus one of {", ".join(_HF_WEIGHT_FILES)})')
        return _read_hf_dir(source, map_location)
    if source.endswith('.safetensors'):
        return _read_safetensors(source, map_location)
    return read_checkpoint_file(source, map_location)


def check_hf_source_config(source: str) -> None:
    """Run the check registered for the ``model_type`` of the Hugging Face ``config.json`` of ``source``
    (a model directory, or a weights file beside one); nothing happens without config or check.

    Raises:
        ValueError: from the check, for a config it cannot honour.
    """
    if not (osp.isdir(source) or source.endswith('.safetensors')):
        return
    config = read_hf_config(source)
    check = _HF_CONFIG_CHECKS.get(config.get('model_type', '')) if isinstance(config, dict) else None
    if check is not None:
        check(config)


def unwrap_state_dict(checkpoint: Any) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint (``state_dict`` or ``model`` entry, else the mapping itself)."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'a checkpoint must be a mapping, got {type(checkpoint).__name__}')
    for key in ('state_dict', 'model'):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            return dict(inner)
    return dict(checkpoint)


def strip_prefixes(state_dict: Mapping[str, torch.Tensor],
                   prefixes: Sequence[str] = ('module.', 'model.')) -> Dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``nn.DataParallel``'s ``module.``, training wrappers' ``model.``).

    A prefix is removed only when every key carries it, so a layout whose own keys start with
    ``model.`` is not damaged; nested wrappers (``module.model.``) are removed one after the other.
    """
    result = dict(state_dict)
    changed = True
    while changed and result:
        changed = False
        for prefix in prefixes:
            if all(key.startswith(prefix) for key in result):
                result = {key[len(prefix):]: value for key, value in result.items()}
                changed = True
    return result


def read_state_dict(source: str, map_location: Optional[str] = 'cpu') -> Dict[str, torch.Tensor]:
    """The state dict of a checkpoint file, URL or Hugging Face directory, unwrapped from its
    ``state_dict``/``model`` entry and from wrapper prefixes: what every loader and converter starts from."""
    return strip_prefixes(unwrap_state_dict(read_checkpoint(source, map_location=map_location)))


def sample_keys(keys: Iterable[str], limit: int = 8, sort: bool = True) -> str:
    """The first ``limit`` of ``keys`` (sorted, or in their own order, e.g. a network's), and how many
    more there are, for messages."""
    keys = sorted(keys) if sort else list(keys)
    text = ', '.join(keys[:limit])
    return text + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')
