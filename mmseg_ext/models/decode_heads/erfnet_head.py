"""The ERFNet paper's output layers as an mmseg decode head."""
from typing import List, Optional, Union

import torch.nn as nn
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.structures import SegDataSample
from mmseg.utils import SampleList
from torch import Tensor

from mmseg_ext.errors import InvalidArgumentError
from mmseg_ext.registry import MODELS

__all__ = ['ERFNetHead']


@MODELS.register_module()
class ERFNetHead(BaseDecodeHead):
    """The authors' ERFNet classifier: a 2x2 stride-2 transposed conv to full-resolution logits.

    On the decoder's 16-channel, 1/2-resolution features the classifier is
    ``ConvTranspose2d(in_channels, num_classes, kernel_size=2, stride=2)``, so the logits have the
    input's resolution. With ``encoder_only=True`` it is the authors' encoder-stage classifier, a 1x1
    conv on the encoder's 128-channel 1/8-resolution features (paired with
    ``ERFNet(encoder_only=True)``), and, as in the paper, the loss is computed at 1/8 against labels
    downsampled by nearest-neighbour sampling instead of on upsampled logits.

    Args:
        in_channels: Channels of the selected input feature map (16 for the full network, 128 for
            the encoder alone).
        channels: Must equal ``in_channels`` if given: the head has no layer before the classifier.
        encoder_only: Build the encoder-stage classifier described above.
        dropout_ratio: Dropout before the classifier; 0 as in the authors' network.
        init_cfg: Initialization config; None keeps PyTorch's default initialisation, as the authors.
        **kwargs: Other :class:`mmseg.models.decode_heads.decode_head.BaseDecodeHead` arguments
            (``num_classes``, ``loss_decode``, ``ignore_index``, ``align_corners``, ...).

    Raises:
        InvalidArgumentError: If ``channels`` differs from ``in_channels`` or ``input_transform`` selects
            several feature maps.
    """

    def __init__(self,
                 in_channels: int = 16,
                 channels: Optional[int] = None,
                 *,
                 encoder_only: bool = False,
                 dropout_ratio: float = 0.,
                 init_cfg: Union[dict, List[dict], None] = None,
                 **kwargs) -> None:
        if kwargs.get('input_transform') is not None:
            raise InvalidArgumentError(f"ERFNetHead takes one feature map, got input_transform="
                                       f"{kwargs['input_transform']!r}")
        if channels is not None and channels != in_channels:
            raise InvalidArgumentError(f'ERFNetHead has no layer before its classifier, so channels must equal '
                                       f'in_channels={in_channels}; got channels={channels}')
        super().__init__(in_channels, in_channels, dropout_ratio=dropout_ratio, init_cfg=init_cfg,
                         **kwargs)
        self.encoder_only = encoder_only
        if not encoder_only:
            self.conv_seg = nn.ConvTranspose2d(in_channels, self.out_channels, kernel_size=2, stride=2)

    def forward(self, inputs: List[Tensor]) -> Tensor:
        """Logits: full resolution for the decoder's features, 1/8 with ``encoder_only``."""
        return self.cls_seg(self._transform_inputs(inputs))

    def loss_by_feat(self, seg_logits: Tensor, batch_data_samples: SampleList) -> dict:
        """mmseg's loss; with ``encoder_only`` the labels are first sampled down to the logits' size."""
        if not self.encoder_only:
            return super().loss_by_feat(seg_logits, batch_data_samples)
        labels = self._stack_batch_gt(batch_data_samples)
        # 'nearest-exact' samples each output pixel's centre, like the authors' PIL resize.
        small_labels = F.interpolate(labels.float(), size=seg_logits.shape[2:],
                                     mode='nearest-exact').to(labels.dtype)
        small_samples = [
            SegDataSample(gt_sem_seg=PixelData(data=label), metainfo=sample.metainfo)
            for label, sample in zip(small_labels, batch_data_samples)
        ]
        return super().loss_by_feat(seg_logits, small_samples)
