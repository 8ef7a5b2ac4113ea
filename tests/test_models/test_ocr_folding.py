"""mmseg_ext.fuse_conv_bn on OCRNet: every BN of HRNet, FCNHead and the OCR head is folded."""
import copy
import os.path as osp

import mmseg
import pytest
import torch
import torch.nn as nn
from hrnet_ocr_reference import TINY, HighResolutionNetOCR
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from mmseg_ext import fuse_conv_bn
from mmseg_ext.converters.hrnet_ocr import infer_architecture
from utils import REPO, randomize_conv_bn_

MMSEG_CONFIGS = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs')


def batch_norms(model: nn.Module):
    return [name for name, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def build(model_cfg) -> nn.Module:
    init_default_scope('mmseg')
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.pop('pretrained', None)
    return randomize_conv_bn_(revert_sync_batchnorm(MODELS.build(model_cfg)), seed=11, eval_mode=True)


def hr18s_model_cfg(config: str):
    cfg = Config.fromfile(config).model
    cfg.decode_head[1].channels, cfg.decode_head[1].ocr_channels = 64, 32  # keep the test fast
    return cfg


def logits(model, image):
    with torch.no_grad():
        return model.encode_decode(image, [dict(img_shape=tuple(image.shape[2:]))] * image.shape[0])


@pytest.mark.parametrize('config', [
    osp.join(REPO, 'configs/ocrnet/ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py'),  # plugin head
    osp.join(MMSEG_CONFIGS, 'ocrnet/ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py'),  # mmseg's OCRNet
])
def test_every_bn_of_ocrnet_hr18s_is_folded(config):
    model = build(hr18s_model_cfg(config))
    assert len(batch_norms(model)) > 100
    image = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    expected = logits(model, image)
    folded = fuse_conv_bn(copy.deepcopy(model))
    assert batch_norms(folded) == []
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(logits(folded, image), expected, atol=1e-4, rtol=0)

    channels_last = folded.to(memory_format=torch.channels_last)
    torch.testing.assert_close(logits(channels_last, image.contiguous(memory_format=torch.channels_last)),
                               expected, atol=1e-4, rtol=0)


def test_converted_authors_model_folds():
    """The authors' numerics (mmseg_ext.HRNet with align_corners=True) survive folding."""
    authors = randomize_conv_bn_(HighResolutionNetOCR(TINY, num_classes=5, mid_channels=16, key_channels=8), eval_mode=True)
    model = build(infer_architecture(authors.state_dict()).model_config())
    model.data_preprocessor = None
    image = torch.randn(2, 3, 72, 100, generator=torch.Generator().manual_seed(1))
    expected = logits(model, image)
    folded = fuse_conv_bn(copy.deepcopy(model))
    assert batch_norms(folded) == []
    torch.testing.assert_close(logits(folded, image), expected, atol=1e-4, rtol=0)
