"""The plugin's registries: children of mmseg's ``MODELS`` and ``OPTIM_WRAPPERS`` with scope ``mmseg_ext``.

Configs keep ``default_scope='mmseg'`` and name plugin models as ``type='mmseg_ext.ERFNet'``. mmengine
resolves the ``mmseg_ext.`` prefix by importing this module (``<scope>.registry``) and then the
``locations`` below, so no ``custom_imports`` are needed. Unscoped names (``'FCNHead'``) looked up here
fall through to mmseg's registry as usual. mmseg's other registries get empty children in the same scope
(:data:`SCOPED_CHILDREN`), for configs that inherit the plugin's.
"""
from typing import Dict, Optional, Type

import mmseg.registry
from mmengine.registry import Registry
from mmseg.registry import MODELS as MMSEG_MODELS
from mmseg.registry import OPTIM_WRAPPERS as MMSEG_OPTIM_WRAPPERS

__all__ = ['MODELS', 'OPTIM_WRAPPERS', 'PluginRegistry', 'SCOPED_CHILDREN', 'ScopedChild']


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


class ScopedChild(Registry):
    """An empty registry in the plugin's scope whose lookups find its parent's types.

    A config that inherits the plugin's configs (``_base_ = ['mmseg_ext::...']``) carries
    ``_scope_='mmseg_ext'`` on the typed entries they define (pipelines, hooks, loops, schedulers), and
    mmengine builds such an entry from the registry of that scope in the entry's registry tree.
    """

    def import_from_location(self) -> None:
        self.parent.import_from_location()  # register the parent's types, which lookups here fall through to


#: A :class:`ScopedChild` of each of mmseg's other registries, by mmseg's name for it.
SCOPED_CHILDREN: Dict[str, Registry] = {
    name: ScopedChild(getattr(mmseg.registry, name).name, parent=getattr(mmseg.registry, name), scope='mmseg_ext')
    for name in mmseg.registry.__all__ if name not in ('MODELS', 'OPTIM_WRAPPERS')
}
