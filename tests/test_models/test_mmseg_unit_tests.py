"""mmseg's own unit tests of the plugin's families, run on the plugin's classes.

The test modules come from the installed mmsegmentation wheel (``site-packages/tests``), not from copies in
this repository. Each is loaded from its source and only the module-level names of the classes under test
are rebound to the plugin's (the names a user would import from the plugin instead); the test functions
then run unchanged. mmseg's ``test_forward.py`` finds its configs next to a source checkout, so it is told
where the wheel keeps them (``mmseg/.mim/configs``), and the config it builds names the plugin's type.
"""
import copy
import importlib
import importlib.util
import inspect
import itertools
import os.path as osp
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Tuple

import mmseg
import pytest

WHEEL_TESTS = Path(mmseg.__file__).resolve().parents[1] / 'tests'
WHEEL_CONFIGS = Path(mmseg.__file__).resolve().parent / '.mim' / 'configs'

#: mmseg test module (relative to the wheel's tests/test_models) -> (plugin module, {name in the test: plugin
#: attribute}). Every name must be bound in the mmseg test module, to a class of mmseg's.
CLASS_SWAPS: Dict[str, Tuple[str, Dict[str, str]]] = {
    'test_backbones/test_mit.py': ('mmseg_ext.models.backbones.mit', {
        'MixVisionTransformer': 'MixVisionTransformer',
        'EfficientMultiheadAttention': 'EfficientMultiheadAttention',
        'MixFFN': 'MixFFN',
        'TransformerEncoderLayer': 'TransformerEncoderLayer',
    }),
    'test_backbones/test_erfnet.py': ('mmseg_ext.models.backbones.erfnet', {
        'ERFNet': 'ERFNet',
        'DownsamplerBlock': 'DownsamplerBlock',
        'NonBottleneck1d': 'NonBottleneck1d',
        'UpsamplerBlock': 'UpsamplerBlock',
    }),
    'test_backbones/test_hrnet.py': ('mmseg_ext.models.backbones.hrnet', {
        'HRNet': 'HRNet',
        'HRModule': 'PluginHRModule',
    }),
    'test_heads/test_ocr_head.py': ('mmseg_ext.models.decode_heads.ocr_head', {'OCRHead': 'OCRHead'}),
    'test_heads/test_segformer_head.py': ('mmseg_ext.models.decode_heads.segformer_head', {
        'SegformerHead': 'SegformerHead'
    }),
}

#: The segmentor test: mmseg's OCRNet config with its OCRHead taken from the plugin.
FORWARD_TEST = 'test_forward.py'
FORWARD_FUNCTIONS = ('test_ocrnet_forward', )
FORWARD_PLUGIN_TYPES = ('OCRHead', )


#: The wheel's top-level ``tests`` package under a name of its own: pytest's importlib mode may bind
#: ``tests`` to this repository's folder.
WHEEL_TESTS_PACKAGE = '_mmseg_wheel_tests'


def _import_wheel_tests_package() -> None:
    if WHEEL_TESTS_PACKAGE in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(WHEEL_TESTS_PACKAGE, WHEEL_TESTS / '__init__.py',
                                                  submodule_search_locations=[str(WHEEL_TESTS)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[WHEEL_TESTS_PACKAGE] = package
    spec.loader.exec_module(package)


def load_wheel_test_module(relative: str) -> ModuleType:
    """A fresh, unregistered instance of ``tests/test_models/<relative>`` from the mmseg wheel.

    It sits in the wheel's package tree, so its relative imports (``from .utils import ...``) reach the
    wheel's helper modules.
    """
    _import_wheel_tests_package()
    path = WHEEL_TESTS / 'test_models' / relative
    package = '.'.join([WHEEL_TESTS_PACKAGE, 'test_models', *Path(relative).parent.parts])
    importlib.import_module(package)
    spec = importlib.util.spec_from_file_location(f'{package}.{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def swap_classes(module: ModuleType, plugin_module_name: str, names: Dict[str, str]) -> None:
    """Rebind ``module``'s names of mmseg classes to the plugin's classes."""
    plugin_module = importlib.import_module(plugin_module_name)
    for name, plugin_name in names.items():
        original = getattr(module, name, None)
        if not inspect.isclass(original) or not original.__module__.startswith('mmseg.'):
            raise AssertionError(f'{module.__name__} no longer binds {name} to an mmseg class (got {original!r})')
        replacement = getattr(plugin_module, plugin_name)
        assert replacement is not original, f'{plugin_module_name}.{plugin_name} is mmseg\'s own class'
        setattr(module, name, replacement)


def plugin_config_loader(original: Callable, swapped: List[str]) -> Callable:
    """mmseg's ``_get_config_module`` (``original``) with the plugin's families switched in.

    Every dict of the config whose type is one of :data:`FORWARD_PLUGIN_TYPES` without a scope is given
    the ``mmseg_ext.`` type; every type resolved to the plugin is appended to ``swapped``.
    """

    def switch(node):
        if isinstance(node, dict):
            kind = node.get('type')
            if kind in FORWARD_PLUGIN_TYPES:
                node['type'] = f'mmseg_ext.{kind}'
            if isinstance(node.get('type'), str) and node['type'].startswith('mmseg_ext.'):
                swapped.append(node['type'])
            for value in node.values():
                switch(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                switch(value)

    def get_config_module(fname: str):
        config = original(fname)
        switch(config.model)
        return config

    return get_config_module


def parametrized_calls(function: Callable) -> List[Tuple[str, dict]]:
    """``(id, kwargs)`` for every case of a test function's ``pytest.mark.parametrize`` marks."""
    axes = []
    for mark in getattr(function, 'pytestmark', []):
        if mark.name != 'parametrize':
            continue
        argnames, argvalues = mark.args[:2]
        argnames = [name.strip() for name in argnames.split(',')] if isinstance(argnames, str) else list(argnames)
        cases = []
        for index, values in enumerate(argvalues):
            values = values if len(argnames) > 1 else (values, )
            label = '-'.join(getattr(value, '__name__', str(index)) for value in values)
            cases.append((label, dict(zip(argnames, values))))
        axes.append(cases)
    calls = []
    for combination in itertools.product(*axes):
        label = '-'.join(part for part, _ in combination)
        kwargs = {key: value for _, part in combination for key, value in part.items()}
        calls.append((label, kwargs))
    return calls


def _class_test_cases() -> List:
    cases = []
    for relative in CLASS_SWAPS:
        module = load_wheel_test_module(relative)
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if name.startswith('test_') and function.__module__ == module.__name__:
                for label, kwargs in parametrized_calls(function):
                    test_id = f'{osp.basename(relative)}::{name}' + (f'[{label}]' if label else '')
                    cases.append(pytest.param(relative, name, kwargs, id=test_id))
    return cases


@pytest.mark.parametrize('relative,function_name,kwargs', _class_test_cases())
def test_mmseg_unit_test_passes_on_plugin_classes(relative: str, function_name: str, kwargs: dict):
    module = load_wheel_test_module(relative)
    swap_classes(module, *CLASS_SWAPS[relative])
    getattr(module, function_name)(**copy.deepcopy(kwargs))


@pytest.mark.parametrize('function_name', FORWARD_FUNCTIONS)
def test_mmseg_segmentor_forward_test_passes_with_plugin_head(function_name: str):
    """mmseg's segmentor test; it trains on 512x1024 inputs (its config pads to the crop size)."""
    module = load_wheel_test_module(FORWARD_TEST)
    swapped: List[str] = []
    module._get_config_directory = lambda: str(WHEEL_CONFIGS)
    module._get_config_module = plugin_config_loader(module._get_config_module, swapped)
    getattr(module, function_name)()
    assert swapped and all(kind.startswith('mmseg_ext.') for kind in swapped)
    assert {f'mmseg_ext.{kind}' for kind in FORWARD_PLUGIN_TYPES} <= set(swapped)


def test_swapping_refuses_a_name_that_is_not_an_mmseg_class():
    module = load_wheel_test_module('test_heads/test_segformer_head.py')
    with pytest.raises(AssertionError, match='NotThere'):
        swap_classes(module, 'mmseg_ext.models.decode_heads.segformer_head', {'NotThere': 'SegformerHead'})
    swap_classes(module, 'mmseg_ext.models.decode_heads.segformer_head', {'SegformerHead': 'SegformerHead'})
    with pytest.raises(AssertionError, match='SegformerHead'):  # already the plugin's: nothing to swap
        swap_classes(module, 'mmseg_ext.models.decode_heads.segformer_head', {'SegformerHead': 'SegformerHead'})
