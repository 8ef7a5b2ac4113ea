"""mmseg_ext.ERFNet: drop-in parity with mmseg's ERFNet, configs reaching every block, odd sizes, errors."""
import copy
import inspect
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn


from mmengine.runner import load_checkpoint
from mmengine.structures import PixelData
from mmseg.models.backbones import ERFNet as MMSegERFNet
from mmseg.structures import SegDataSample

from mmseg_ext.builder import build_segmentor
from mmseg_ext.models.backbones.erfnet import (ERFNet, ERFNetDownsamplerBlock, ERFNetNonBottleneck1d,
                                               ERFNetUpsamplerBlock)
from mmseg_ext.models.decode_heads.erfnet_head import ERFNetHead
from mmseg_ext.registry import MODELS
from utils import REPO, batch_norms, max_abs_diff, mmseg_config_path, randomize_batch_norms, without_scope

FCN_CONFIG = osp.join(REPO, 'configs/erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py')
MMSEG_FCN_CONFIG = mmseg_config_path('erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py')


def _mmseg_and_plugin(channels_last=None, **kwargs):
    torch.manual_seed(0)
    reference = randomize_batch_norms(MMSegERFNet(**kwargs)).eval()
    plugin = ERFNet(channels_last=channels_last, **kwargs).eval()
    plugin.load_state_dict(reference.state_dict(), strict=True)
    return reference, plugin


def _data_sample(height: int, width: int, seed: int = 0) -> SegDataSample:
    generator = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 19, (1, height, width), generator=generator)
    label[:, :2] = 255
    shape = (height, width)
    return SegDataSample(gt_sem_seg=PixelData(data=label),
                         metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape))


def test_registered_in_plugin_scope():
    assert MODELS.get('ERFNet') is ERFNet
    assert MODELS.get('mmseg_ext.ERFNet') is ERFNet


def test_same_constructor_defaults_as_mmseg():
    ours = inspect.signature(ERFNet.__init__).parameters
    theirs = inspect.signature(MMSegERFNet.__init__).parameters
    for name, parameter in theirs.items():
        assert name in ours, f'mmseg argument {name} is missing'
        assert ours[name].default == parameter.default, name
    assert list(ours)[:len(theirs)] == list(theirs), 'positional order differs from mmseg'
    extra = [name for name in ours if name not in theirs]
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in extra)


def test_state_dict_matches_mmseg_keys_and_shapes():
    reference, plugin = MMSegERFNet().state_dict(), ERFNet().state_dict()
    assert list(reference) == list(plugin)
    assert all(reference[key].shape == plugin[key].shape for key in reference)
    assert len(reference) == 3 * 7 + 17 * 18 + 2 * 7  # downsamplers, residual blocks, upsamplers


@pytest.mark.parametrize('size', [(64, 128), (67, 101), (9, 13)])
def test_eval_outputs_match_mmseg(size):
    reference, plugin = _mmseg_and_plugin()
    inputs = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference(inputs), plugin(inputs)
    assert len(actual) == 1
    assert actual[0].shape == expected[0].shape
    assert expected[0].abs().mean() > 0.05  # the comparison is not between near-zero maps
    assert max_abs_diff(actual[0], expected[0]) <= 1e-4


@pytest.mark.parametrize('channels_last', [False, None, True])
@pytest.mark.parametrize('input_channels_last', [False, True])
def test_memory_layout_options_match_mmseg_and_return_the_promised_layout(channels_last, input_channels_last):
    reference, plugin = _mmseg_and_plugin(channels_last=channels_last)
    inputs = torch.randn(2, 3, 48, 72, generator=torch.Generator().manual_seed(4))
    if input_channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, actual = reference(inputs)[0], plugin(inputs)[0]
    assert max_abs_diff(actual, expected) <= 1e-4
    returns_channels_last = channels_last is True or (channels_last is not True and input_channels_last)
    assert actual.is_contiguous(memory_format=torch.channels_last if returns_channels_last else torch.contiguous_format)


def test_plugin_state_dict_loads_strictly_into_mmseg():
    plugin = randomize_batch_norms(ERFNet(), seed=3).eval()
    reference = MMSegERFNet().eval()
    reference.load_state_dict(plugin.state_dict(), strict=True)
    inputs = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert max_abs_diff(plugin(inputs)[0], reference(inputs)[0]) <= 1e-4


@pytest.mark.parametrize('channels_last', [False, None])
def test_training_step_matches_mmseg_and_in_place_activations_keep_autograd_valid(channels_last):
    """Batch statistics amplify float rounding, so compare with mmseg computing in the same layout."""
    reference, plugin = _mmseg_and_plugin(dropout_ratio=0., channels_last=channels_last)
    assert plugin.channels_last is channels_last
    reference.train(), plugin.train()
    inputs = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    reference_inputs = inputs if channels_last is False else inputs.contiguous(memory_format=torch.channels_last)
    expected, actual = reference(reference_inputs)[0], plugin(inputs)[0]
    assert actual.is_contiguous()
    assert max_abs_diff(actual, expected) <= 1e-4
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (actual * weights).sum().backward()
    reference_grads = dict(reference.named_parameters())
    for name, parameter in plugin.named_parameters():
        torch.testing.assert_close(parameter.grad, reference_grads[name].grad, atol=1e-4, rtol=1e-3, msg=name)


def test_mmseg_segmentor_checkpoint_loads_strictly_and_matches(tmp_path):
    reference = build_segmentor(MMSEG_FCN_CONFIG)
    reference.init_weights()
    randomize_batch_norms(reference, seed=5).eval()
    path = str(tmp_path / 'mmseg_erfnet.pth')
    torch.save({'meta': {}, 'state_dict': reference.state_dict()}, path)

    plugin = build_segmentor(FCN_CONFIG)
    assert type(plugin.backbone) is ERFNet
    load_checkpoint(plugin, path, map_location='cpu', strict=True)
    plugin.eval()
    image = torch.randint(0, 256, (3, 64, 128), generator=torch.Generator().manual_seed(0)).float()
    inputs = reference.data_preprocessor(dict(inputs=[image]), False)['inputs']
    metas = [dict(img_shape=(64, 128), ori_shape=(64, 128), pad_shape=(64, 128))]
    with torch.no_grad():
        expected = reference.encode_decode(inputs, metas)
        actual = plugin.encode_decode(inputs, metas)
    assert max_abs_diff(actual, expected) <= 1e-4


def test_fcn_config_is_mmseg_recipe_with_plugin_backbone():
    from mmengine.config import Config
    ours, theirs = Config.fromfile(FCN_CONFIG), Config.fromfile(MMSEG_FCN_CONFIG)
    assert ours.model.backbone.pop('type') == 'mmseg_ext.ERFNet'
    assert theirs.model.backbone.pop('type') == 'ERFNet'
    assert without_scope(ours.to_dict()) == without_scope(theirs.to_dict())


def test_default_batch_norms_use_authors_eps():
    model = ERFNet()
    assert {bn.eps for bn in batch_norms(model)} == {1e-3}
    assert len(list(batch_norms(model))) == 3 + 13 * 2 + 2 + 4 * 2


def test_norm_cfg_and_act_cfg_reach_every_block():
    model = ERFNet(norm_cfg=dict(type='GN', num_groups=4), act_cfg=dict(type='LeakyReLU', negative_slope=0.2))
    norms = [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm))]
    assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == 4 for m in norms)
    activations = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert len(activations) == 3 + 13 + 2 + 4  # one module per block, shared within residual blocks
    assert all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in activations)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))[0].shape == (1, 16, 16, 16)


def test_explicit_eps_and_norm_type_are_respected():
    model = ERFNet(norm_cfg=dict(type='SyncBN', eps=1e-5, momentum=0.01, requires_grad=True))
    norms = list(batch_norms(model))
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert {(m.eps, m.momentum) for m in norms} == {(1e-5, 0.01)}


def test_conv_cfg_reaches_every_block():
    model = ERFNet(conv_cfg=dict(type='Conv2dAdaptivePadding'))
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert convs == []
    assert sum(type(m).__name__ == 'Conv2dAdaptivePadding' for m in model.modules()) == 3 + 13 * 4 + 4 * 4


def test_requires_grad_false_freezes_norms():
    model = ERFNet(norm_cfg=dict(type='BN', requires_grad=False))
    assert all(not p.requires_grad for bn in batch_norms(model) for p in bn.parameters())


def test_paper_dropout_options():
    model = ERFNet(dropout_ratio=(0.03, 0.3), channel_dropout=True)
    blocks = [block for block in model.encoder if isinstance(block, ERFNetNonBottleneck1d)]
    dropouts = [[m for m in block.modules() if isinstance(m, nn.Dropout2d)] for block in blocks]
    assert [d[0].p for d in dropouts] == [0.03] * 5 + [0.3] * 8
    assert not any(isinstance(m, nn.Dropout) and type(m) is nn.Dropout for m in model.modules())
    decoder_dropouts = [m for block in model.decoder for m in block.modules() if isinstance(m, nn.Dropout2d)]
    assert {m.p for m in decoder_dropouts} == {0.}
    dilations = [block.convs_layers[5].dilation[0] for block in blocks]
    assert dilations == [1] * 5 + [2, 4, 8, 16, 2, 4, 8, 16]


def test_encoder_only_returns_eighth_resolution_and_shares_keys():
    encoder = ERFNet(encoder_only=True)
    full = ERFNet()
    assert len(encoder.decoder) == 0
    encoder_keys = set(encoder.state_dict())
    assert encoder_keys == {key for key in full.state_dict() if key.startswith('encoder.')}
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 64, 96))[0].shape == (1, 128, 8, 12)


@pytest.mark.parametrize('head', ['fcn', 'paper'])
@pytest.mark.parametrize('size', [(67, 101), (37, 45)])
def test_segmentor_predicts_and_trains_on_sides_not_multiple_of_8(head, size):
    if head == 'fcn':
        model = build_segmentor(FCN_CONFIG, dict(model=dict(data_preprocessor=dict(size=None))))
    else:
        model = build_segmentor(FCN_CONFIG, dict(model=dict(
            data_preprocessor=dict(size=None),
            decode_head=dict(_delete_=True, type='mmseg_ext.ERFNetHead', in_channels=16, num_classes=19))))
        assert isinstance(model.decode_head, ERFNetHead)
    sample = _data_sample(*size)
    model.train()
    losses = model.loss(torch.randn(2, 3, *size), [sample, sample])
    assert torch.isfinite(losses['decode.loss_ce'])
    losses['decode.loss_ce'].backward()
    model.eval()
    with torch.no_grad():
        result = model.predict(torch.randn(1, 3, *size), [sample])[0]
    assert result.seg_logits.data.shape == (19, *size)
    assert result.pred_sem_seg.data.shape == (1, *size)


@pytest.mark.parametrize('kwargs, message', [
    (dict(enc_downsample_channels=(16, 64)), 'enc_downsample_channels=(16, 64)'),
    (dict(enc_non_bottleneck_channels=(64, 96)), 'enc_non_bottleneck_channels=(64, 96)'),
    (dict(enc_stage_non_bottlenecks=(5, 6)), 'enc_stage_non_bottlenecks=(5, 6)'),
    (dict(enc_non_bottleneck_dilations=(2, 0)), 'enc_non_bottleneck_dilations'),
    (dict(dec_upsample_channels=(64, 32)), 'dec_upsample_channels=(64, 32)'),
    (dict(dec_upsample_channels=(64, )), 'dec_upsample_channels=(64,)'),
    (dict(dec_stages_non_bottleneck=(2, )), 'dec_stages_non_bottleneck=(2,)'),
    (dict(enc_downsample_channels=(16, 64, 48), enc_non_bottleneck_channels=(64, 48)), 'out_channels=48'),
    (dict(in_channels=16), 'in_channels=16'),
    (dict(dropout_ratio=1.5), 'dropout_ratio must be in [0, 1), got 1.5'),
    (dict(dropout_ratio=(0.1, 0.2, 0.3)), 'dropout_ratio=(0.1, 0.2, 0.3)'),
])
def test_inconsistent_arguments_raise_value_error_quoting_them(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ERFNet(**kwargs)


def _documented_arguments(cls) -> list:
    doc = inspect.getdoc(cls)
    args_section = doc.split('Args:\n', 1)[1]
    args_section = re.split(r'\n\n|\n(?=Raises:)', args_section)[0]
    return re.findall(r'^    (\*{0,2}\w+)(?: \(.*\))?:', args_section, flags=re.M)


@pytest.mark.parametrize('cls', [ERFNet, ERFNetDownsamplerBlock, ERFNetNonBottleneck1d, ERFNetUpsamplerBlock,
                                 ERFNetHead])
def test_docstring_documents_exactly_the_arguments(cls):
    parameters = []
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == 'self':
            continue
        parameters.append(f'**{name}' if parameter.kind is inspect.Parameter.VAR_KEYWORD else name)
    assert _documented_arguments(cls) == parameters


def test_deepcopy_and_repeated_forward_are_stable():
    _, plugin = _mmseg_and_plugin()
    inputs = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        first = plugin(inputs)[0]
        second = copy.deepcopy(plugin)(inputs)[0]
        third = plugin(inputs)[0]
    assert torch.equal(first, second) and torch.equal(first, third)
