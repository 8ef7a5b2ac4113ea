"""Configs named ``mmseg_ext::NAME`` and configs inheriting them (the built wheel: ``make wheel-check``)."""
import os.path as osp

import mmengine.utils
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.hub import get_config
from mmengine.registry import HOOKS, LOOPS, init_default_scope

import mmseg_ext
from mmseg_ext.preflight import check_config_path
from utils import CONFIGS

SEGFORMER = 'segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py'


def test_the_package_is_found_where_it_was_imported_from():
    # An editable install's distribution lies in site-packages, the package in the checkout.
    assert mmengine.utils.get_installed_path('mmseg_ext') == osp.dirname(osp.abspath(mmseg_ext.__file__))


def test_plugin_configs_resolve_by_package_name():
    resolved = check_config_path(f'mmseg_ext::{SEGFORMER}')
    assert osp.samefile(resolved, CONFIGS / SEGFORMER)
    cfg = get_config(f'mmseg_ext::{SEGFORMER}')
    assert cfg.model.backbone.type == 'mmseg_ext.MixVisionTransformer'


def test_config_inheriting_a_plugin_config_builds_its_pipelines_hooks_and_loops():
    # The base's typed entries carry _scope_='mmseg_ext'; mmseg's types must still be found from that scope.
    cfg = Config.fromstring("_base_ = ['mmseg_ext::_demo_/erfnet.py']\n", '.py')
    assert cfg.train_pipeline[0]['_scope_'] == 'mmseg_ext'
    init_default_scope(cfg.default_scope)
    assert len(Compose(cfg.train_pipeline).transforms) == len(cfg.train_pipeline)
    for registry, entries in ((HOOKS, cfg.default_hooks.values()), (LOOPS, [cfg.train_cfg, cfg.val_cfg])):
        for entry in entries:
            with registry.switch_scope_and_registry(entry['_scope_']) as scoped:
                assert scoped.scope == 'mmseg_ext' and scoped.get(entry['type']) is not None, entry['type']

