"""The models a benchmark compares: mmseg's counterpart of a plugin config (:func:`to_mmseg_config`) and
the random weights a benchmark without a checkpoint times (:func:`randomize_batch_norms`)."""
import inspect
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ['to_mmseg_config', 'randomize_batch_norms']

PLUGIN_PREFIX = 'mmseg_ext.'

# ----------------------------------------------------------------------------------------------------------
# Config resolution: the plugin's config and mmseg's counterpart of it.


def _accepted_arguments(cls: type) -> Optional[set]:
    """Names ``cls(...)`` accepts, following ``**kwargs`` up the class hierarchy; None if unbounded."""
    names = set()
    for klass in cls.__mro__:
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(vars(klass)['__init__']).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {'self'}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def _plugin_defaults(cls: type) -> Dict[str, Any]:
    defaults = {}
    for klass in reversed(cls.__mro__):
        if '__init__' in vars(klass):
            for p in inspect.signature(vars(klass)['__init__']).parameters.values():
                if p.default is not p.empty:
                    defaults[p.name] = p.default
    return defaults


def _resolve_mit_arch(cfg: dict) -> None:
    from mmseg_ext.models.backbones.mit import MIT_ARCH_SETTINGS
    arch = cfg.pop('arch', None)
    if arch is not None:
        for key, value in MIT_ARCH_SETTINGS[arch].items():
            cfg.setdefault(key, value)


# Plugin arguments that map onto mmseg's explicit ones before the generic translation.
_SPECIAL_CASES: Dict[str, Callable[[dict], None]] = {'MixVisionTransformer': _resolve_mit_arch}


def to_mmseg_config(cfg: Any) -> Any:
    """The same model config with every ``mmseg_ext.X`` replaced by mmseg's ``X``.

    Plugin-only arguments are dropped when they hold the plugin's default (mmseg then behaves the same);
    ``arch`` of MiT becomes mmseg's explicit settings.

    Raises:
        ValueError: if a plugin type has no mmseg class of the same name, or sets a plugin-only
            argument to a non-default value (that model has no mmseg counterpart to compare with).
    """
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(to_mmseg_config(item) for item in cfg)
    if not isinstance(cfg, dict):
        return cfg
    result = {key: to_mmseg_config(value) for key, value in cfg.items()}
    type_name = result.get('type')
    if not (isinstance(type_name, str) and type_name.startswith(PLUGIN_PREFIX)):
        return result
    from mmseg.registry import MODELS as MMSEG_MODELS

    from mmseg_ext.registry import MODELS as PLUGIN_MODELS
    name = type_name[len(PLUGIN_PREFIX):]
    mmseg_cls = MMSEG_MODELS.module_dict.get(name)
    if mmseg_cls is None:
        MMSEG_MODELS.import_from_location()
        mmseg_cls = MMSEG_MODELS.module_dict.get(name)
    if mmseg_cls is None:
        raise ValueError(f'{type_name} has no mmseg counterpart (mmseg has no model named {name!r})')
    plugin_cls = PLUGIN_MODELS.get(name)
    _SPECIAL_CASES.get(name, lambda c: None)(result)
    accepted = _accepted_arguments(mmseg_cls)
    defaults = _plugin_defaults(plugin_cls)
    for key in list(result):
        if key == 'type' or accepted is None or key in accepted:
            continue
        if key in defaults and result[key] == defaults[key]:
            del result[key]
        else:
            raise ValueError(f'{type_name} sets {key}={result[key]!r}, which mmseg\'s {name} does not have, '
                             'so there is no mmseg counterpart to compare with')
    result['type'] = name
    return result


def randomize_batch_norms(model: nn.Module, seed: int = 0, mean_std: float = 0.1,
                          var_range: Tuple[float, float] = (0.5, 1.5), bias_std: float = 0.1,
                          batches_tracked: Optional[int] = None) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters (random weights
    otherwise leave BN at identity, which would hide folding and layout errors); returns ``model``.

    Running means N(0, mean_std^2), variances U(var_range), scales U(0.5, 1.5), shifts N(0, bias_std^2),
    drawn in that order per norm from one generator seeded with ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    low, high = var_range
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.randn(shape, generator=generator) * mean_std)
                module.running_var.copy_(torch.rand(shape, generator=generator) * (high - low) + low)
                if module.weight is not None:
                    module.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(shape, generator=generator) * bias_std)
                if batches_tracked is not None:
                    module.num_batches_tracked.fill_(batches_tracked)
    return model
