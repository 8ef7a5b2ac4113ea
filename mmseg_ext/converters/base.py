"""The interface every published-checkpoint converter implements, and format detection.

A converter recognises one published layout from its keys alone and maps it onto this plugin's
models. ``tools/model_converters/convert_checkpoint.py`` tries every registered converter and refuses files that fit
none or several, so adding a family means adding one module that calls :func:`register_converter`.
"""
import importlib
import os.path as osp
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Dict, List, Mapping

import torch

from mmseg_ext.checkpoint.reading import sample_keys
from mmseg_ext.errors import InvalidArgumentError

__all__ = ['CheckpointConverter', 'ConversionResult', 'register_converter', 'registered_converters',
           'detect_converter', 'config_reference', 'config_file']

# The folder holding the package: a checkout of the repository, or site-packages.
_PACKAGE_PARENT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_PACKAGE = osp.basename(osp.dirname(osp.dirname(osp.abspath(__file__))))


def config_reference(relative: str) -> str:
    """How the tools name the plugin config ``relative`` (its path under ``configs/``, e.g.
    ``'erfnet/x.py'``): ``configs/<relative>`` when the package runs from a checkout of its repository that has
    the file (the tools run from its root), else ``mmseg_ext::<relative>``, the copy installed with the
    package. Every tool reads both forms; :func:`config_file` gives the file."""
    if osp.isfile(osp.join(_PACKAGE_PARENT, 'configs', relative)):
        return f'configs/{relative}'
    return f'{_PACKAGE}::{relative}'


def config_file(reference: str) -> str:
    """The file a :func:`config_reference` names, wherever the tool runs from.

    Raises:
        PreflightError: the package is installed without that config.
    """
    if '::' in reference:
        from mmseg_ext.preflight import check_config_path
        return check_config_path(reference)
    return osp.join(_PACKAGE_PARENT, reference)


@dataclass
class ConversionResult:
    """What a converter returns.

    Attributes:
        state_dict: Keys and tensors for the segmentor built from ``config``.
        config: The config that builds the matching model, as the tools name it (:func:`config_reference`;
            printed last by the CLI).
        notes: Human-readable remarks printed by the CLI (class count handling, dropped keys, ...).
        cfg_options: ``--cfg-options`` (``key=value``) ``config`` needs to build this network, if any
            (the notes name them too); the CLI builds the model with them to check the converted weights.
    """
    state_dict: Dict[str, torch.Tensor]
    config: str
    notes: List[str] = field(default_factory=list)
    cfg_options: List[str] = field(default_factory=list)


class CheckpointConverter(ABC):
    """One published checkpoint layout. Subclasses set ``name`` and ``description``."""

    name: str = ''
    description: str = ''

    @abstractmethod
    def matches(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        """Whether ``state_dict`` (prefixes such as ``module.`` already stripped) is in this layout."""

    def mismatches(self, state_dict: Mapping[str, torch.Tensor]) -> List[str]:
        """Why ``state_dict`` is not in this layout (missing or unexpected keys, wrong shapes), one line
        each; shown when no layout matches. The default says nothing."""
        return []

    @abstractmethod
    def convert(self, state_dict: Mapping[str, torch.Tensor]) -> ConversionResult:
        """Map ``state_dict`` onto the plugin's model. Raise ``ValueError`` naming the offending keys."""


_CONVERTERS: Dict[str, CheckpointConverter] = {}
# Modules of this package that register the built-in layouts when imported.
_BUILTIN_CONVERTER_MODULES = ('hrnet_ocr', 'erfnet_authors', 'segformer')


def _import_builtin_converters() -> None:
    for module in _BUILTIN_CONVERTER_MODULES:
        importlib.import_module(f'{__package__}.{module}')  # registers on first import only


def register_converter(converter: CheckpointConverter) -> CheckpointConverter:
    """Add ``converter`` to the formats the CLI detects; names must be unique."""
    if not converter.name:
        raise InvalidArgumentError(f'{type(converter).__name__} has no name')
    if converter.name in _CONVERTERS:
        raise InvalidArgumentError(f"a converter named '{converter.name}' is already registered")
    _CONVERTERS[converter.name] = converter
    return converter


def registered_converters() -> Dict[str, CheckpointConverter]:
    """All registered converters by name, the built-in ones included."""
    _import_builtin_converters()
    return dict(_CONVERTERS)


def detect_converter(state_dict: Mapping[str, torch.Tensor]) -> CheckpointConverter:
    """The single registered converter whose layout ``state_dict`` is in.

    Raises:
        ValueError: if no converter or more than one matches; the message lists the known formats.
    """
    _import_builtin_converters()
    matching = [conv for conv in _CONVERTERS.values() if conv.matches(state_dict)]
    if len(matching) == 1:
        return matching[0]
    known = '\n'.join(f'  {conv.name}: {conv.description}' for conv in _CONVERTERS.values())
    if not matching:
        sample = sample_keys(state_dict)
        raise ValueError(f'the checkpoint fits none of the known layouts (first keys: {sample}).\n'
                         f'Known layouts:\n{known}')
    raise ValueError(f"the checkpoint fits several layouts: {', '.join(c.name for c in matching)}")
