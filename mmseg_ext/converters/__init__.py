"""Converters from published checkpoint layouts onto the plugin's models.

The built-in converters (one module per family) register themselves the first time the registry is
asked (:func:`registered_converters`, :func:`detect_converter`), so importing this package does not import
every family's converter. Converters name the config that builds their result with :func:`config_reference`,
which works in a checkout and in an installed package alike.
"""
from .base import (CheckpointConverter, ConversionResult, config_file, config_reference, detect_converter,
                   register_converter, registered_converters)

__all__ = ['CheckpointConverter', 'ConversionResult', 'config_file', 'config_reference', 'detect_converter',
           'register_converter', 'registered_converters']
