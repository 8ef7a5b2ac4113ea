"""Plugin decode heads."""
from .ocr_head import OCRHead  # noqa: F401
from .erfnet_head import ERFNetHead  # noqa: F401
from .segformer_head import SegformerHead  # noqa: F401
