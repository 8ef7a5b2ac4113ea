"""The plugin's registries: children of mmseg's ``MODELS`` and ``OPTIM_WRAPPERS`` with scope ``mmseg_ext``.

Configs keep ``default_scope='mmseg'`` and name plugin models as ``type='mmseg_ext.ERFNet'``. mmengine
resolves the ``mmseg_ext.`` prefix by importing this module (``<scope>.registry``) and then the
``locations`` below, so no ``custom_imports`` are needed. Unscoped names (``'FCNHead'``) looked up here
fall through to mmseg's registry as usual.
"""
from typing import Optional, Type

from mmengine.registry import Registry
from mmseg.registry import MODELS as MMSEG_MODELS
from mmseg.registry import OPTIM_WRAPPERS as MMSEG_OPTIM_WRAPPERS

__all__ = ['MODELS', 'OPTIM_WRAPPERS', 'PluginRegistry']


class PluginRegistry(Registry):
    """A registry whose failed lookups name every type the plugin has."""

    def get(self, key: str) -> Optional[Type]:
        obj = super().get(key)
        if obj is None:
            self.import_from_location()
            known = ', '.join(f'{self.scope}.{name}' for name in sorted(self.module_dict))
            raise KeyError(f"'{key}' is not a type of the {self.scope} plugin's {self.name} registry. "
                           f'Types it has: {known}.')
        return obj


MODELS = PluginRegistry('model', parent=MMSEG_MODELS, scope='mmseg_ext', locations=['mmseg_ext.models'])
OPTIM_WRAPPERS = PluginRegistry('optim_wrapper', parent=MMSEG_OPTIM_WRAPPERS, scope='mmseg_ext',
                                locations=['mmseg_ext.engine'])
