"""Plugin models; importing this package registers them in :data:`mmseg_ext.registry.MODELS`."""
from . import backbones, decode_heads, losses  # noqa: F401
