"""The one way the tools, the exporter, the benchmark and the tests build a segmentor from a config."""
import copy
import os
from typing import Mapping, Optional, Union

from mmengine.config import Config
from torch import nn

from .errors import InvalidArgumentError

__all__ = ['build_segmentor']


def build_segmentor(config: Union[str, os.PathLike, Config, Mapping], cfg_options: Optional[dict] = None, *,
                    keep_pretrained: bool = False) -> nn.Module:
    """Build the segmentor of ``config`` for weights that come from elsewhere: a checkpoint, or random
    weights in tests and benchmarks. The model is returned as built (training mode).

    Args:
        config: A config file, a loaded :class:`Config` (both built in the config's ``default_scope``), or
            a model config (``cfg.model``, built in the current default scope).
        cfg_options: Overrides merged into a config file or :class:`Config` first (a copy of it), as
            ``--cfg-options`` does.
        keep_pretrained: Keep the config's ``pretrained`` and the backbone's ``init_cfg`` for
            ``init_weights()`` to read. By default they are dropped, so nothing is downloaded or read.

    SyncBN becomes BN, as mmseg's runner does in one process. ``config`` is not modified (mmseg's
    segmentors move ``pretrained`` into the backbone's config while they build).
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    if isinstance(config, (str, os.PathLike)):
        from .preflight import check_config_path
        config = Config.fromfile(check_config_path(str(config)))
    elif isinstance(config, Config):
        config = copy.deepcopy(config)
    elif cfg_options:
        raise InvalidArgumentError(f'cfg_options apply to a whole config, not to a model config; got {cfg_options}')
    if isinstance(config, Config):
        if cfg_options:
            config.merge_from_dict(cfg_options)
        init_default_scope(config.get('default_scope', 'mmseg'))
        model_cfg = config.model
    else:
        model_cfg = copy.deepcopy(config)
    if not keep_pretrained:
        model_cfg.pop('pretrained', None)
        backbone_cfg = model_cfg.get('backbone', {})
        backbone_cfg.pop('pretrained', None)
        backbone_cfg.pop('init_cfg', None)
    return revert_sync_batchnorm(MODELS.build(model_cfg))
