"""Config, process-group and model set-up shared by the tools (train, test, benchmark, export)."""
import copy
import logging
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from .preflight import check_config_path

__all__ = ['load_run_config', 'build_segmentor']


def load_run_config(config: str, launcher: str = 'none', cfg_options: Optional[dict] = None,
                    work_dir: Optional[str] = None) -> Config:
    """Read ``config`` and apply the command line in mmseg's order of precedence.

    The work dir is the CLI's, else the config's, else ``work_dirs/<config name>``. Distributed runs on a
    machine without CUDA are adapted by :func:`_adapt_distributed_to_cpu`.
    """
    cfg = Config.fromfile(check_config_path(config))
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    if launcher != 'none' and not torch.cuda.is_available():
        _adapt_distributed_to_cpu(cfg)
    return cfg


def _adapt_distributed_to_cpu(cfg: Config) -> None:
    """gloo instead of mmseg's default NCCL (GPU only), and DDP without device ids (CPU modules)."""
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') == 'nccl':
        print_log('CUDA is not available: using the gloo backend instead of nccl', logger='current',
                  level=logging.WARNING)
        dist_cfg['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                                                   find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def build_segmentor(model_cfg: dict) -> torch.nn.Module:
    """Build ``model_cfg`` (in the current default scope) for weights that come from elsewhere: a
    checkpoint, or random weights in tests and benchmarks.

    ``pretrained`` and the backbone's ``init_cfg`` are dropped, so nothing is downloaded or read, and SyncBN
    becomes BN as mmseg's runner does in one process. ``model_cfg`` is not modified (mmseg's segmentors
    move ``pretrained`` into the backbone's config while they build).
    """
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.pop('pretrained', None)
    backbone_cfg = model_cfg.get('backbone', {})
    backbone_cfg.pop('pretrained', None)
    backbone_cfg.pop('init_cfg', None)
    return revert_sync_batchnorm(MODELS.build(model_cfg))
