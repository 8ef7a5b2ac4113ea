"""mmseg_ext: faster, paper-faithful model families as a plugin for mmsegmentation 1.x.

Importing the package makes mmengine's checkpoint loading safe on torch >= 2.6
(:mod:`mmseg_ext.safe_unpickler`). Models register lazily: a config naming ``type='mmseg_ext.X'`` imports
:mod:`mmseg_ext.registry` and :mod:`mmseg_ext.models` through mmengine's registry.
"""
from . import safe_unpickler
from .folding import fuse_conv_bn
from .version import __version__

safe_unpickler.install()

__all__ = ['__version__', 'fuse_conv_bn']
