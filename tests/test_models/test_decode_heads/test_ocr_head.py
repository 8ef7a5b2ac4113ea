"""mmseg_ext.OCRHead: parity with mmseg's OCRHead, the paper's scale > 1, SDPA, settings and errors."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hrnet_ocr_reference import ObjectAttentionBlock2D
from mmengine.registry import init_default_scope
from mmseg.models.decode_heads import OCRHead as MMSegOCRHead

from mmseg_ext.models.decode_heads.ocr_head import ObjectAttentionBlock, OCRHead, SpatialGatherModule
from mmseg_ext.registry import MODELS
from utils import randomize_conv_bn_

IN_CHANNELS = [4, 8, 16, 32]
NUM_CLASSES = 7


def head_kwargs(**overrides) -> dict:
    kwargs = dict(in_channels=IN_CHANNELS, in_index=(0, 1, 2, 3), input_transform='resize_concat', channels=24,
                  ocr_channels=12, dropout_ratio=-1, num_classes=NUM_CLASSES, norm_cfg=dict(type='BN'),
                  align_corners=False)
    kwargs.update(overrides)
    return kwargs


def features(height: int = 16, width: int = 24, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, channels, -(-height // 2**i), -(-width // 2**i), generator=generator)
              for i, channels in enumerate(IN_CHANNELS)]
    regions = 3 * torch.randn(batch, NUM_CLASSES, height, width, generator=generator)
    return inputs, regions


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('size', [(16, 24), (13, 21)])
def test_matches_mmseg_ocr_head(align_corners, size):
    reference = randomize_conv_bn_(MMSegOCRHead(**head_kwargs(align_corners=align_corners)), seed=1, eval_mode=True)
    head = OCRHead(**head_kwargs(align_corners=align_corners))
    assert list(head.state_dict()) == list(reference.state_dict())
    head.load_state_dict(reference.state_dict(), strict=True)
    head.eval()
    inputs, regions = features(*size)
    with torch.no_grad():
        expected = reference(inputs, regions)
        actual = head(inputs, regions)
    assert expected.abs().max() > 0.5  # non-trivial logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_registered_and_built_from_config():
    init_default_scope('mmseg')
    from mmseg.registry import MODELS as MMSEG_MODELS
    head = MMSEG_MODELS.build(dict(type='mmseg_ext.OCRHead', **head_kwargs()))
    assert type(head) is OCRHead
    assert MODELS.get('OCRHead') is OCRHead


def test_channels_last_input_gives_same_logits():
    head = randomize_conv_bn_(OCRHead(**head_kwargs()), seed=2, eval_mode=True)
    inputs, regions = features()
    with torch.no_grad():
        expected = head(inputs, regions)
        head_cl = copy.deepcopy(head).to(memory_format=torch.channels_last)
        actual = head_cl([x.contiguous(memory_format=torch.channels_last) for x in inputs],
                         regions.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_attention_runs_through_sdpa(monkeypatch):
    calls = []
    original = F.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        calls.append((tuple(query.shape), tuple(key.shape), tuple(value.shape)))
        return original(query, key, value, *args, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    head = OCRHead(**head_kwargs()).eval()
    inputs, regions = features(16, 24, batch=2)
    with torch.no_grad():
        head(inputs, regions)
    # 2 images, 16*24 query pixels, 7 regions, 12 key channels; in eval mode the values are the
    # regions already through out_project's conv and BN (24 channels).
    assert calls == [((2, 16 * 24, 12), (2, NUM_CLASSES, 12), (2, NUM_CLASSES, 24))]
    head.train()
    head(inputs, regions)
    assert calls[1] == ((2, 16 * 24, 12), (2, NUM_CLASSES, 12), (2, NUM_CLASSES, 12))


@pytest.mark.parametrize('size', [(16, 24), (13, 21)])
def test_scale_2_is_the_authors_pooled_attention(size):
    """scale=2: queries on the max-pooled map, object context upsampled back (authors' code)."""
    channels, key_channels = 24, 12
    authors = randomize_conv_bn_(ObjectAttentionBlock2D(channels, key_channels, scale=2, align_corners=True), seed=3, eval_mode=True)
    block = ObjectAttentionBlock(channels, key_channels, scale=2, align_corners=True,
                                 norm_cfg=dict(type='BN')).eval()
    mapping = {'f_pixel.0': 'query_project.0.conv', 'f_pixel.1.0': 'query_project.0.bn',
               'f_pixel.2': 'query_project.1.conv', 'f_pixel.3.0': 'query_project.1.bn',
               'f_object.0': 'key_project.0.conv', 'f_object.1.0': 'key_project.0.bn',
               'f_object.2': 'key_project.1.conv', 'f_object.3.0': 'key_project.1.bn',
               'f_down.0': 'value_project.conv', 'f_down.1.0': 'value_project.bn',
               'f_up.0': 'out_project.conv', 'f_up.1.0': 'out_project.bn'}
    state = {}
    for key, value in authors.state_dict().items():
        module, name = key.rsplit('.', 1)
        state[f'{mapping[module]}.{name}'] = value
    missing, unexpected = block.load_state_dict(state, strict=False)
    assert unexpected == [] and all(key.startswith('bottleneck.') for key in missing)

    generator = torch.Generator().manual_seed(4)
    pixels = torch.randn(2, channels, *size, generator=generator)
    regions = torch.randn(2, channels, NUM_CLASSES, 1, generator=generator)
    with torch.no_grad():
        expected = authors(pixels, regions)
        actual = block.object_context(pixels, regions)
    assert actual.shape == pixels.shape
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_scale_2_head_runs_where_mmseg_fails():
    inputs, regions = features(16, 24)
    broken = MMSegOCRHead(scale=2, **head_kwargs()).eval()
    with pytest.raises(RuntimeError):
        broken(inputs, regions)
    head = randomize_conv_bn_(OCRHead(scale=2, **head_kwargs()), seed=5, eval_mode=True)
    head.load_state_dict(broken.state_dict(), strict=True)  # same keys whatever the scale
    with torch.no_grad():
        logits = head(inputs, regions)
        full = OCRHead(**head_kwargs()).eval()
        full.load_state_dict(head.state_dict())
        unpooled = full(inputs, regions)
    assert logits.shape == (2, NUM_CLASSES, 16, 24)
    assert torch.isfinite(logits).all()
    assert (logits - unpooled).abs().max() > 1e-3  # the pooling really changes the attention


def test_spatial_gather_is_a_spatial_softmax_weighted_mean():
    generator = torch.Generator().manual_seed(6)
    feats = torch.randn(2, 5, 4, 6, generator=generator)
    logits = torch.randn(2, 3, 4, 6, generator=generator)
    regions = SpatialGatherModule(scale=2.5)(feats, logits)
    weights = torch.softmax(2.5 * logits.flatten(2), dim=2)  # over the 24 pixels
    expected = torch.einsum('bkp,bcp->bck', weights, feats.flatten(2)).unsqueeze(3)
    assert regions.shape == (2, 5, 3, 1)
    torch.testing.assert_close(regions, expected, atol=1e-6, rtol=0)


def test_gather_scale_and_value_channels_are_configurable():
    head = OCRHead(gather_scale=2.0, value_channels=20, **head_kwargs()).eval()
    block = head.object_context_block
    assert head.spatial_gather_module.scale == 2.0
    assert block.value_project.conv.out_channels == 20 and block.out_project.conv.in_channels == 20
    assert block.query_project[1].conv.out_channels == 12
    inputs, regions = features()
    with torch.no_grad():
        assert head(inputs, regions).shape == (2, NUM_CLASSES, 16, 24)


def test_dropout_before_classifier_like_the_authors():
    head = OCRHead(**head_kwargs(dropout_ratio=0.05))
    assert isinstance(head.dropout, torch.nn.Dropout2d) and head.dropout.p == 0.05


@pytest.mark.parametrize('kwargs, message', [
    (dict(scale=0), 'scale must be a positive integer, got 0'),
    (dict(scale=1.5), 'got 1.5'),
    (dict(ocr_channels=-3), 'ocr_channels must be a positive integer, got -3'),
    (dict(gather_scale=0.0), 'gather scale must be a positive number, got 0.0'),
    (dict(value_channels=0), 'value_channels must be a positive integer, got 0'),
])
def test_bad_settings_raise_value_errors_quoting_the_value(kwargs, message):
    settings = head_kwargs()
    settings.update(kwargs)
    with pytest.raises(ValueError, match=message.replace('.', r'\.')):
        OCRHead(**settings)


def test_regions_of_another_size_are_refused():
    head = OCRHead(**head_kwargs()).eval()
    inputs, _ = features(16, 24)
    with pytest.raises(ValueError, match=r'regions \(2, 7, 8, 12\) for features \(2, 24, 16, 24\)'):
        head(inputs, torch.randn(2, NUM_CLASSES, 8, 12))


def test_training_mode_matches_mmseg_too():
    """In training mode (batch statistics) the head computes exactly what mmseg's computes."""
    reference = randomize_conv_bn_(MMSegOCRHead(**head_kwargs()), seed=7, eval_mode=True).train()
    head = OCRHead(**head_kwargs())
    head.load_state_dict(reference.state_dict(), strict=True)
    head.train()
    inputs, regions = features()
    expected = reference(inputs, regions)
    actual = head(inputs, regions)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(head.object_context_block.out_project.bn.running_mean,
                               reference.object_context_block.out_project.bn.running_mean)
