"""Every config in configs/ takes the plugin's model families from the plugin, never from mmseg."""
import functools
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from mmengine.config import Config

from utils import REPO

CONFIGS = sorted((REPO / 'configs').rglob('*.py'))

#: The model families the plugin replaces. (mmseg's HRNet stays mmseg's in mmseg's recipes: the plugin's
#: HRNet only adds the authors' ``align_corners``.)
PLUGIN_FAMILIES = ('ERFNet', 'OCRHead', 'MixVisionTransformer', 'SegformerHead')


@pytest.fixture(autouse=True, scope='module')
def mmseg_metafiles_read_once():
    """mmengine finds an ``mmseg::`` config by parsing all of mmseg's model metafiles again for every such
    base, which dominates loading the configs; the files do not change during the tests, so parse each once."""
    from mmengine.config import utils
    original = utils.load
    utils.load = functools.lru_cache(maxsize=None)(original)
    yield
    utils.load = original


def config_types(node, where: str = '') -> Iterator[Tuple[str, str]]:
    """``(location, type)`` of every ``type`` string in a loaded config, nested dicts and lists included."""
    if isinstance(node, dict):
        if isinstance(node.get('type'), str):
            yield where or '<root>', node['type']
        for key, value in node.items():
            yield from config_types(value, f'{where}.{key}' if where else str(key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from config_types(value, f'{where}[{index}]')


def families_taken_from_mmseg(config: Config) -> List[str]:
    """``location: type`` of every plugin family whose type resolves outside the plugin's scope."""
    found = []
    for where, kind in config_types(config.to_dict()):
        scope, _, name = kind.rpartition('.')
        if name in PLUGIN_FAMILIES and scope != 'mmseg_ext':
            found.append(f'{where}: {kind}')
    return found


def test_configs_are_found():
    assert len(CONFIGS) > 40
    assert REPO / 'configs/ocrnet/ocrnet_mit-b0_8xb1-160k_cityscapes-1024x1024.py' in CONFIGS


@pytest.mark.parametrize('path', CONFIGS, ids=[str(path.relative_to(REPO / 'configs')) for path in CONFIGS])
def test_config_takes_plugin_families_from_the_plugin(path: Path):
    assert families_taken_from_mmseg(Config.fromfile(str(path))) == []


def test_a_config_left_on_mmseg_classes_is_caught(tmp_path):
    path = tmp_path / 'mit_ocr_on_mmseg.py'
    path.write_text("_base_ = 'mmseg::segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py'\n"
                    "model = dict(decode_head=dict(type='mmseg.SegformerHead'))\n")
    assert families_taken_from_mmseg(Config.fromfile(str(path))) == [
        'model.backbone: MixVisionTransformer', 'model.decode_head: mmseg.SegformerHead'
    ]
