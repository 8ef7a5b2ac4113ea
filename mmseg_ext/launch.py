"""Run configs as the tools (train, test, benchmark, export) read them: mmseg's command-line precedence, and
distributed runs adapted to machines without CUDA. Models are built by :mod:`mmseg_ext.builder`."""
import logging
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from .preflight import check_config_path

__all__ = ['load_run_config']


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

