"""Mixed-precision training on CPU: mmengine's ``AmpOptimWrapper`` refuses to run without an accelerator."""
import contextlib
from typing import Iterator, Optional

from mmengine.device import get_device
from mmengine.optim import OptimWrapper
from torch import nn

from mmseg_ext.precision import bf16_autocast, check_precision
from mmseg_ext.registry import OPTIM_WRAPPERS

__all__ = ['Bf16AutocastOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class Bf16AutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward (``optim_context``) runs under bfloat16 autocast.

    What ``tools/train.py --amp`` uses where mmengine's float16 ``AmpOptimWrapper`` cannot run (CPU).
    bfloat16 has float32's exponent range, so gradients neither underflow nor overflow and no loss scaling
    is needed; weights, gradients and the optimizer state stay float32, and autocast runs convolutions and
    matrix products in bf16 and keeps losses and reductions in float32.

    Args:
        device_type: Device the model runs on (default: mmengine's current device).
        **kwargs: ``OptimWrapper`` arguments (``optimizer``, ``accumulative_counts``, ``clip_grad``).

    Raises:
        PrecisionError: if the device has no native bf16 (emulated bf16 is slower than float32).
    """

    def __init__(self, device_type: Optional[str] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.device_type = device_type or get_device()
        check_precision('bf16', self.device_type)

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        with super().optim_context(model), bf16_autocast(self.device_type):
            yield
