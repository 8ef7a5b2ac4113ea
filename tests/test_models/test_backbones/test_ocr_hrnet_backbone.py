"""mmseg_ext.HRNet: mmseg's HRNet (same keys) with the authors' align_corners fuse upsampling available."""
import pytest
import torch

from mmseg.models.backbones import HRNet as MMSegHRNet

from mmseg_ext.models.backbones.hrnet import HRNet, PluginHRModule
from utils import HRNET_TINY_EXTRA as EXTRA
from utils import randomize_conv_bn_



@pytest.mark.parametrize('size', [(64, 128), (72, 100), (50, 70)])
def test_default_is_mmseg_hrnet_exactly(size):
    reference = randomize_conv_bn_(MMSegHRNet(EXTRA), eval_mode=True)
    backbone = HRNet(EXTRA)
    assert list(backbone.state_dict()) == list(reference.state_dict())
    backbone.load_state_dict(reference.state_dict(), strict=True)
    backbone.eval()
    assert all(type(module) is PluginHRModule for module in backbone.stage3)
    image = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = reference(image), backbone(image)
    assert len(actual) == 4
    for ours, theirs in zip(actual, expected):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_align_corners_changes_the_fuse_upsampling():
    reference = randomize_conv_bn_(MMSegHRNet(EXTRA), eval_mode=True)
    backbone = HRNet(EXTRA, align_corners=True)
    backbone.load_state_dict(reference.state_dict(), strict=True)
    backbone.eval()
    assert all(module.align_corners for module in backbone.stage4)
    image = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        difference = (backbone(image)[0] - reference(image)[0]).abs().max()
    assert difference > 1e-2


def test_bad_align_corners_is_refused():
    with pytest.raises(ValueError, match="align_corners must be True or False, got 'yes'"):
        HRNet(EXTRA, align_corners='yes')


@pytest.mark.parametrize('multiscale_output', [True, False])
def test_stages_are_built_as_mmseg_builds_them(multiscale_output):
    reference = MMSegHRNet(EXTRA, multiscale_output=multiscale_output, zero_init_residual=True)
    backbone = HRNet(EXTRA, multiscale_output=multiscale_output, zero_init_residual=True)
    for name in ('stage2', 'stage3', 'stage4'):
        ours, theirs = getattr(backbone, name), getattr(reference, name)
        assert [type(module) for module in ours] == [PluginHRModule] * len(theirs)
        assert ([(m.num_branches, m.multiscale_output, m.in_channels, m.block_init_cfg) for m in ours]
                == [(m.num_branches, m.multiscale_output, m.in_channels, m.block_init_cfg) for m in theirs])
    assert {k: v.shape for k, v in backbone.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
