"""Data the plugin writes itself: the procedurally drawn demo scenes (:mod:`.demo_scenes`)."""
from .demo_scenes import write_demo_dataset

__all__ = ['write_demo_dataset']
