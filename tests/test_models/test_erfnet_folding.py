"""mmseg_ext.fuse_conv_bn: the plugin's ERFNet folds itself, everything else goes through mmcv."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn as nn

from mmcv.cnn import ConvModule
from mmcv.cnn import fuse_conv_bn as mmcv_fuse_conv_bn
from mmseg.models.backbones import ERFNet as MMSegERFNet

from mmseg_ext.builder import build_segmentor
from mmseg_ext.folding import fuse_conv_bn
from mmseg_ext.models.backbones.erfnet import ERFNet, ERFNetDownsamplerBlock
from utils import REPO, batch_norms, max_abs_diff, randomize_batch_norms

FCN_CONFIG = osp.join(REPO, 'configs/erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py')
PAPER_CONFIG = osp.join(REPO, 'configs/erfnet/erfnet_paper_1xb6-150e_cityscapes-512x1024.py')


def _eval_segmentor(config: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_segmentor(config)  # PyTorch's default init; the paper config's init_cfg is not run
    return randomize_batch_norms(model, seed).eval()


def _logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    metas = [dict(img_shape=inputs.shape[2:], ori_shape=inputs.shape[2:], pad_shape=inputs.shape[2:])] * len(inputs)
    with torch.no_grad():
        return model.encode_decode(inputs, metas)


@pytest.mark.parametrize('config', [FCN_CONFIG, PAPER_CONFIG])
@pytest.mark.parametrize('size', [(64, 128), (67, 101)])
def test_folded_segmentor_matches_and_has_no_batch_norm_left(config, size):
    model = _eval_segmentor(config)
    inputs = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    expected = _logits(model, inputs)
    assert len(list(batch_norms(model))) > 0
    folded = fuse_conv_bn(copy.deepcopy(model))
    assert list(batch_norms(folded)) == []  # backbone by itself, FCNHead's ConvModule by mmcv
    assert max_abs_diff(_logits(folded, inputs), expected) <= 1e-4


def test_downsampler_keeps_pool_channels_as_scale_and_shift():
    block = randomize_batch_norms(ERFNetDownsamplerBlock(16, 64)).eval()
    inputs = torch.randn(2, 16, 30, 42)
    with torch.no_grad():
        expected = block(inputs)
        block.fold_bn()
        actual = block(inputs)
    assert isinstance(block.bn, nn.Identity)
    assert block.pool_scale.shape == block.pool_shift.shape == (1, 16, 1, 1)
    assert block.conv.weight.shape == (48, 16, 3, 3)
    assert max_abs_diff(actual, expected) <= 1e-5


@pytest.mark.parametrize('config', [FCN_CONFIG, PAPER_CONFIG])
def test_folding_is_idempotent_and_the_fastest_path_matches(config):
    model = _eval_segmentor(config, seed=2)
    inputs = torch.randn(1, 3, 48, 80)
    expected = _logits(model, inputs)
    folded = fuse_conv_bn(fuse_conv_bn(copy.deepcopy(model)))
    assert max_abs_diff(_logits(folded, inputs), expected) <= 1e-4
    # the folded+channels-last variant tools/analysis_tools/benchmark.py times
    folded = folded.to(memory_format=torch.channels_last)
    folded.backbone.channels_last = True
    features = folded.extract_feat(inputs)
    assert features[0].is_contiguous(memory_format=torch.channels_last)
    assert max_abs_diff(_logits(folded, inputs), expected) <= 1e-4


def test_mmseg_erfnet_weights_fold_through_plugin_model():
    """mmcv's routine crashes on mmseg's ERFNet; loading its weights into the plugin's model folds them."""
    reference = randomize_batch_norms(MMSegERFNet()).eval()
    with pytest.raises(RuntimeError):
        mmcv_fuse_conv_bn(copy.deepcopy(reference))
    plugin = ERFNet().eval()
    plugin.load_state_dict(reference.state_dict(), strict=True)
    inputs = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        assert max_abs_diff(fuse_conv_bn(plugin)(inputs)[0], reference(inputs)[0]) <= 1e-4


@pytest.mark.parametrize('size', [(40, 72), (37, 59)])
def test_mmseg_erfnet_folds_in_place_through_the_plugin_blocks(size):
    """mmseg's down- and upsamplers are swapped for the plugin's (same weights), then everything folds."""
    reference = randomize_batch_norms(MMSegERFNet()).eval()
    model = fuse_conv_bn(copy.deepcopy(reference))
    assert list(batch_norms(model)) == []
    assert type(model) is MMSegERFNet
    replaced = [type(module).__name__ for module in model.modules() if type(module).__module__.startswith('mmseg_ext')]
    assert replaced.count('ERFNetDownsamplerBlock') == 3 and replaced.count('ERFNetUpsamplerBlock') == 2
    inputs = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert max_abs_diff(model(inputs)[0], reference(inputs)[0]) <= 1e-4


def test_a_bare_mmseg_downsampler_is_refused_in_one_line():
    from mmseg.models.backbones.erfnet import DownsamplerBlock
    with pytest.raises(ValueError, match='bare mmseg.models.backbones.erfnet.DownsamplerBlock cannot be folded'):
        fuse_conv_bn(DownsamplerBlock(3, 16))


def test_other_models_are_folded_exactly_like_mmcv():
    torch.manual_seed(0)
    model = nn.Sequential(
        ConvModule(3, 8, 3, padding=1, norm_cfg=dict(type='BN')),
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU()),
        ConvModule(8, 4, 3, padding=1, norm_cfg=dict(type='BN'), act_cfg=None))
    randomize_batch_norms(model).eval()
    ours = fuse_conv_bn(copy.deepcopy(model))
    theirs = mmcv_fuse_conv_bn(copy.deepcopy(model))
    assert str(ours) == str(theirs)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    assert all(torch.equal(ours_state[key], theirs_state[key]) for key in ours_state)


class _SelfFolding(nn.Module):
    """A plugin-style module: mmcv would fold its conv/BN pair, but it asks to do it itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def fold_bn(self) -> None:
        self.calls += 1


def test_self_folding_modules_are_left_to_their_own_method_inside_mmcv_models():
    inner = _SelfFolding()
    model = nn.Sequential(ConvModule(3, 4, 1, norm_cfg=dict(type='BN')), nn.Sequential(inner), nn.BatchNorm2d(4))
    model.eval()
    fuse_conv_bn(model)
    assert inner.calls == 1
    assert isinstance(inner.bn, nn.BatchNorm2d)  # mmcv did not touch it
    assert model[1][0] is inner  # put back in place
    assert isinstance(model[0].bn, nn.Identity)  # the ConvModule went through mmcv
