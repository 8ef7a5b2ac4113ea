"""Converters from published checkpoint layouts.

The built-in converters (one module per family) register themselves the first time the registry is
asked (:func:`registered_converters`, :func:`detect_converter`), so importing one layout module (say
:mod:`mmseg_ext.converters.mit_layouts` from the MiT backbone) does not import every family's models.
"""
from .base import (CheckpointConverter, ConversionResult, detect_converter, register_converter,
                   registered_converters)

__all__ = ['CheckpointConverter', 'ConversionResult', 'detect_converter', 'register_converter',
           'registered_converters']
