"""Config set-up shared by ``tools/train.py`` and ``tools/test.py`` (mmseg's order of precedence)."""
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
    """Read ``config`` and apply the command line as mmseg's tools do.

    The work dir is the CLI's, else the config's, else ``work_dirs/<config name>``. Distributed runs on a
    machine without CUDA use the gloo backend instead of mmseg's default NCCL, which needs GPUs.
    """
    cfg = Config.fromfile(check_config_path(config))
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    dist_cfg = cfg.get('env_cfg', {}).get('dist_cfg', {})
    if launcher != 'none' and dist_cfg.get('backend') == 'nccl' and not torch.cuda.is_available():
        print_log('CUDA is not available: using the gloo backend instead of nccl', logger='current',
                  level=logging.WARNING)
        cfg.env_cfg.dist_cfg.backend = 'gloo'
    return cfg
