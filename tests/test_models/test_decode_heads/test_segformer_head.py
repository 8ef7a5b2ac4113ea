"""mmseg_ext.SegformerHead: mmseg's head (drop-in) and the official NVlabs / Hugging Face decoder."""
import pytest
import torch
import torch.nn.functional as F
from mmseg.models.decode_heads import SegformerHead as MmsegSegformerHead


from mmseg_ext.models.decode_heads.segformer_head import SegformerHead
from mmseg_ext.registry import MODELS
from utils import randomize_

IN_CHANNELS = [32, 64, 160, 256]
HEAD_KWARGS = dict(in_channels=IN_CHANNELS, in_index=[0, 1, 2, 3], channels=48, dropout_ratio=0.1, num_classes=5,
                   norm_cfg=dict(type='BN', requires_grad=True), align_corners=False)


def _features(batch: int = 2, size: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, size >> index, size >> index, generator=generator)
            for index, channels in enumerate(IN_CHANNELS)]


def test_mmseg_style_is_mmseg_head():
    torch.manual_seed(0)
    reference = randomize_(MmsegSegformerHead(**HEAD_KWARGS), seed=1).eval()
    head = SegformerHead(**HEAD_KWARGS).eval()
    assert list(head.state_dict()) == list(reference.state_dict())
    head.load_state_dict(reference.state_dict(), strict=True)
    features = _features()
    with torch.no_grad():
        torch.testing.assert_close(head(features), reference(features), rtol=0, atol=1e-4)


def test_official_style_is_the_nvlabs_decoder():
    """Linear projections with bias (no norm, no activation), concatenation c4..c1, fuse, BN, ReLU, classifier."""
    head = randomize_(SegformerHead(head_style='official', **HEAD_KWARGS), seed=2).eval()
    keys = set(head.state_dict())
    assert {f'convs.{i}.conv.{p}' for i in range(4) for p in ('weight', 'bias')} <= keys
    assert not any(key.startswith('convs.') and '.bn.' in key for key in keys)
    assert 'fusion_conv.conv.bias' not in keys and 'fusion_conv.bn.running_var' in keys
    features = _features()
    size = features[0].shape[2:]
    projected = []
    for index in (3, 2, 1, 0):
        conv = head.convs[index].conv
        x = features[index]
        tokens = x.flatten(2).transpose(1, 2) @ conv.weight.flatten(1).T + conv.bias  # nn.Linear on tokens
        x = tokens.transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])
        projected.append(F.interpolate(x, size=size, mode='bilinear', align_corners=False))
    fuse, bn = head.fusion_conv.conv, head.fusion_conv.bn
    fused = F.relu(F.batch_norm(F.conv2d(torch.cat(projected, 1), fuse.weight), bn.running_mean, bn.running_var,
                                bn.weight, bn.bias, eps=bn.eps))
    expected = F.conv2d(fused, head.conv_seg.weight, head.conv_seg.bias)
    with torch.no_grad():
        torch.testing.assert_close(head(features), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('channels_last', [False, True], ids=['contiguous', 'channels-last'])
def test_fusion_without_concatenation_matches_mmseg_in_training_and_folded(channels_last):
    """The fusion, accumulated block by block, gives mmseg's outputs and gradients in either input layout,
    and keeps a bias that folding put into the fusion convolution."""
    reference = randomize_(MmsegSegformerHead(**dict(HEAD_KWARGS, dropout_ratio=0.)), seed=3).double().train()
    head = SegformerHead(**dict(HEAD_KWARGS, dropout_ratio=0.)).double().train()
    head.load_state_dict(reference.state_dict(), strict=True)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    inputs = {name: [f.double().contiguous(memory_format=layout).requires_grad_() for f in _features()]
              for name in ('ours', 'theirs')}
    ours, theirs = head(inputs['ours']), reference(inputs['theirs'])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    ours.pow(2).sum().backward()
    theirs.pow(2).sum().backward()
    for mine, expected in zip(inputs['ours'], inputs['theirs']):
        torch.testing.assert_close(mine.grad, expected.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(head.fusion_conv.conv.weight.grad, reference.fusion_conv.conv.weight.grad,
                               rtol=1e-10, atol=1e-10)

    from mmseg_ext.folding import fuse_conv_bn
    head.eval(), reference.eval()
    with torch.no_grad():
        expected = reference(inputs['theirs'])
        folded = fuse_conv_bn(head)
        assert folded.fusion_conv.conv.bias is not None
        torch.testing.assert_close(folded(inputs['ours']), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize('head_style', ['mmseg', 'official'])
def test_every_head_parameter_gets_a_gradient(head_style):
    head = SegformerHead(head_style=head_style, **HEAD_KWARGS).train()
    logits = head(_features())
    assert logits.shape == (2, 5, 16, 16)
    logits.pow(2).mean().backward()
    without = [name for name, parameter in head.named_parameters() if parameter.grad is None
               or not parameter.grad.abs().sum() > 0]
    assert not without


def test_registered_and_defaults_to_mmseg_style():
    head = MODELS.build(dict(type='mmseg_ext.SegformerHead', **HEAD_KWARGS))
    assert isinstance(head, SegformerHead) and head.head_style == 'mmseg' and head.interpolate_mode == 'bilinear'


def test_unknown_head_style_is_an_error():
    with pytest.raises(ValueError, match=r"head_style='nvlabs' is not supported; choose one of 'mmseg', 'official'"):
        SegformerHead(head_style='nvlabs', **HEAD_KWARGS)


def test_in_index_must_match_in_channels():
    with pytest.raises(ValueError, match=r'in_channels \[32, 64, 160, 256\] and in_index \[0, 1, 2\]'):
        SegformerHead(**{**HEAD_KWARGS, 'in_index': [0, 1, 2]})
