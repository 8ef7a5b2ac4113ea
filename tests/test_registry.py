"""The plugin registry: scope, lookup from mmseg's registry without custom_imports, clear errors."""
import subprocess
import sys

import pytest
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS as MMSEG_MODELS

from mmseg_ext.registry import MODELS


def test_child_of_mmseg_models():
    assert MODELS.scope == 'mmseg_ext'
    assert MODELS.parent is MMSEG_MODELS
    assert MMSEG_MODELS._children['mmseg_ext'] is MODELS


def test_plugin_types_are_registered():
    MODELS.import_from_location()
    assert {'ERFNet'} <= set(MODELS.module_dict)


def test_scoped_type_builds_in_fresh_process_without_custom_imports():
    # A fresh interpreter that never imported mmseg_ext: mmengine must find it from the scope alone.
    code = ("from mmengine.registry import init_default_scope; init_default_scope('mmseg'); "
            "from mmseg.registry import MODELS; "
            "m = MODELS.build(dict(type='mmseg_ext.ERFNet')); print(type(m).__module__)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip().startswith('mmseg_ext.models')


def test_unscoped_types_still_resolve_to_mmseg():
    init_default_scope('mmseg')
    head = MODELS.build(dict(type='FCNHead', in_channels=8, channels=8, num_classes=3))
    assert type(head).__module__.startswith('mmseg.models')


def test_unknown_plugin_type_lists_known_types():
    init_default_scope('mmseg')
    with pytest.raises(KeyError) as info:
        MMSEG_MODELS.build(dict(type='mmseg_ext.ERFNetPlusPlus'))
    message = str(info.value)
    assert 'mmseg_ext.ERFNetPlusPlus' in message or 'ERFNetPlusPlus' in message
    assert 'mmseg_ext.ERFNet' in message
