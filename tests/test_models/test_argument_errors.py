"""Bad arguments raise one error class in every family: a ValueError that is also mmseg's AssertionError."""
import re

import pytest

from mmseg_ext.converters.base import register_converter
from mmseg_ext.converters.segformer import official_config
from mmseg_ext.errors import InvalidArgumentError
from mmseg_ext.models.backbones.erfnet import ERFNet, NonBottleneck1d
from mmseg_ext.models.backbones.hrnet import HRNet
from mmseg_ext.models.backbones.mit import EfficientMultiheadAttention, MixVisionTransformer
from mmseg_ext.models.losses.class_weighted_ce_loss import ClassWeightedCrossEntropyLoss
from mmseg_ext.models.decode_heads.erfnet_head import ERFNetHead
from mmseg_ext.models.decode_heads.ocr_head import OCRHead
from mmseg_ext.models.decode_heads.segformer_head import SegformerHead

_HEAD = dict(in_channels=8, channels=8, num_classes=3)


class _NamelessConverter:
    name = ''


BAD_CALLS = [
    ('ERFNet', lambda: ERFNet(dec_upsample_channels=(128, 64, 16)), 'dec_upsample_channels=(128, 64, 16)'),
    ('NonBottleneck1d', lambda: NonBottleneck1d(16, 1.5), 'drop_rate must be in [0, 1), got 1.5'),
    ('ERFNetHead', lambda: ERFNetHead(in_channels=16, channels=64, num_classes=3), 'got channels=64'),
    ('OCRHead', lambda: OCRHead(ocr_channels=0, **_HEAD), 'ocr_channels must be a positive integer, got 0'),
    ('MixVisionTransformer', lambda: MixVisionTransformer(arch='b9'), "arch='b9'"),
    ('MixVisionTransformer both weights',
     lambda: MixVisionTransformer(pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth')),
     "pretrained='a.pth'"),
    ('EfficientMultiheadAttention', lambda: EfficientMultiheadAttention(8, 2, batch_first=False),
     'batch_first=False'),
    ('SegformerHead', lambda: SegformerHead(in_channels=(1, 2, 3), in_index=(0, 1), channels=5, num_classes=2),
     'in_channels [1, 2, 3] and in_index [0, 1]'),
    ('HRNet', lambda: HRNet(dict(), align_corners='yes'), "align_corners must be True or False, got 'yes'"),
    ('ClassWeightedCrossEntropyLoss', lambda: ClassWeightedCrossEntropyLoss(class_weight=[1.0, -2.0]),
     'got [1.0, -2.0]'),
    ('official_config', lambda: official_config('b0', 7), 'has 7 classes'),
    ('register_converter', lambda: register_converter(_NamelessConverter()), '_NamelessConverter has no name'),
]


def test_the_error_is_both_value_error_and_assertion_error():
    assert issubclass(InvalidArgumentError, ValueError) and issubclass(InvalidArgumentError, AssertionError)


@pytest.mark.parametrize('call, message', [case[1:] for case in BAD_CALLS], ids=[case[0] for case in BAD_CALLS])
def test_bad_argument_raises_the_compatible_error_naming_the_value(call, message):
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        call()


def test_mit_init_cfg_of_a_wrong_type_raises_type_error_as_mmseg():
    model = MixVisionTransformer(embed_dims=8, num_layers=[1, 1, 1, 1], init_cfg=123)
    with pytest.raises(TypeError, match='init_cfg must be a dict or a list of dicts, got 123'):
        model.init_weights()
