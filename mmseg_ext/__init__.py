"""mmseg_ext: faster, paper-faithful model families as a plugin for mmsegmentation 1.x.

Importing the package applies the workarounds the installed mmengine needs (:mod:`mmseg_ext.compat`),
among them safe checkpoint loading on torch >= 2.6 (:mod:`mmseg_ext.checkpoint.safe_unpickler`). Models register
lazily: a config naming ``type='mmseg_ext.X'`` imports
:mod:`mmseg_ext.registry` and :mod:`mmseg_ext.models` through mmengine's registry.
"""
from . import compat
from .folding import fuse_conv_bn
from .version import __version__

compat.apply()

__all__ = ['__version__', 'fuse_conv_bn']
