"""Converters from published checkpoint layouts; each module registers its converters on import."""
from .base import (CheckpointConverter, ConversionResult, detect_converter, register_converter,
                   registered_converters, strip_prefixes)

__all__ = ['CheckpointConverter', 'ConversionResult', 'detect_converter', 'register_converter',
           'registered_converters', 'strip_prefixes']
from . import hrnet_ocr  # noqa: F401,E402  (registers the authors HRNet-OCR layout)
from . import erfnet_authors  # noqa: F401,E402  (registers the ERFNet authors' layout)
from . import segformer  # noqa: F401,E402  (registers the NVlabs and Hugging Face SegFormer layouts)
