"""Plugin backbones."""
from .hrnet import HRNet  # noqa: F401
from .erfnet import ERFNet  # noqa: F401
from .mit import MixVisionTransformer  # noqa: F401
