"""Training-loop pieces the plugin adds to mmengine's (registered in :mod:`mmseg_ext.registry`)."""
from .optim_wrapper import Bf16AutocastOptimWrapper

__all__ = ['Bf16AutocastOptimWrapper']
