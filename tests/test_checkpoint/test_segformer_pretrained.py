"""Pretrained MiT encoders in mmseg's, the official NVlabs and the Hugging Face layouts, detected by keys."""
import json

import pytest
import torch
from segformer_reference import NVlabsMiT

from mmseg_ext.checkpoint.mit_layouts import extract_mit_encoder
from mmseg_ext.checkpoint.mit_pretrained import load_mit_pretrained
from mmseg_ext.models.backbones.mit import MixVisionTransformer
from utils import REPO, load_tool, randomize_, saved_hf_segformer

transformers = pytest.importorskip('transformers')

B0_STAGES = [32, 64, 160, 256]
IMAGES = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _features(model):
    model.eval()
    with torch.no_grad():
        return model(IMAGES)


def _assert_close_relative(actual, expected, tolerance=1e-4):
    for act, exp in zip(actual, expected):
        assert act.shape == exp.shape
        assert ((act - exp).norm() / exp.norm()).item() < tolerance


def _pretrained(checkpoint, **kwargs) -> MixVisionTransformer:
    model = MixVisionTransformer(arch='b0', init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint), **kwargs))
    model.init_weights()
    return model


@pytest.fixture(scope='module')
def nvlabs_imagenet(tmp_path_factory):
    """An NVlabs ImageNet-style mit_b0.pth (raw state dict with the 1000-class head) and its model."""
    torch.manual_seed(0)
    model = randomize_(NVlabsMiT(), seed=3).eval()
    path = tmp_path_factory.mktemp('nvlabs') / 'mit_b0.pth'
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture(scope='module')
def hf_classifier(tmp_path_factory):
    """A Hugging Face SegformerForImageClassification (MiT-B0) directory with config.json and safetensors."""
    return saved_hf_segformer(tmp_path_factory.mktemp('hf') / 'mit-b0', 'SegformerForImageClassification', 10)


def test_mmseg_layout_loads_exactly(tmp_path):
    source = randomize_(MixVisionTransformer(arch='b0'), seed=2)
    torch.save(source.state_dict(), tmp_path / 'mit_b0.pth')
    model = _pretrained(tmp_path / 'mit_b0.pth')
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_mmseg_segmentor_checkpoint_with_and_without_prefix(tmp_path):
    source = randomize_(MixVisionTransformer(arch='b0'), seed=2)
    state = {f'backbone.{key}': value for key, value in source.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.zeros(19, 256, 1, 1)
    torch.save({'state_dict': state, 'meta': {}}, tmp_path / 'segformer.pth')
    for kwargs in (dict(), dict(prefix='backbone.')):
        model = _pretrained(tmp_path / 'segformer.pth', **kwargs)
        assert torch.equal(model.layers[3][2].weight, source.layers[3][2].weight)


def test_nvlabs_imagenet_checkpoint(nvlabs_imagenet):
    path, reference = nvlabs_imagenet
    model = _pretrained(path)
    with torch.no_grad():
        expected = reference.forward_features(IMAGES)
    # NVlabs' patch-embedding and reduction LayerNorms use eps 1e-5 (mmseg: 1e-6), hence not bit-exact.
    _assert_close_relative(_features(model), expected, 1e-4)


def test_hf_classification_directory_and_safetensors_file(hf_classifier):
    path, reference = hf_classifier
    with torch.no_grad():
        expected = reference.segformer(IMAGES, output_hidden_states=True).hidden_states
    for source in (path, path / 'model.safetensors'):
        _assert_close_relative(_features(_pretrained(source)), expected, 1e-4)


def test_hf_segformer_model_layout(tmp_path):
    config = transformers.SegformerConfig()
    torch.manual_seed(0)
    reference = randomize_(transformers.SegformerModel(config), seed=5).eval()
    reference.save_pretrained(tmp_path)
    assert any(key.startswith('encoder.') for key in reference.state_dict())
    with torch.no_grad():
        expected = reference(IMAGES, output_hidden_states=True).hidden_states
    _assert_close_relative(_features(_pretrained(tmp_path)), expected, 1e-4)


def test_deprecated_pretrained_argument(nvlabs_imagenet):
    path, reference = nvlabs_imagenet
    with pytest.warns(UserWarning, match='pretrained is deprecated'):
        model = MixVisionTransformer(arch='b0', pretrained=str(path))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(path))
    model.init_weights()
    assert torch.equal(model.layers[0][0].projection.weight, reference.patch_embed1.proj.weight)


def test_config_built_segmentor_loads_pretrained_encoder(nvlabs_imagenet):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    path, reference = nvlabs_imagenet
    init_default_scope('mmseg')
    segmentor = MODELS.build(dict(
        type='EncoderDecoder',
        backbone=dict(type='mmseg_ext.MixVisionTransformer', arch='b0',
                      init_cfg=dict(type='Pretrained', checkpoint=str(path))),
        decode_head=dict(type='mmseg_ext.SegformerHead', in_channels=B0_STAGES, in_index=[0, 1, 2, 3], channels=32,
                         num_classes=3, norm_cfg=dict(type='BN'))))
    segmentor.init_weights()
    assert torch.equal(segmentor.backbone.layers[1][1][0].attn.attn.in_proj_weight,
                       torch.cat([reference.block2[0].attn.q.weight, reference.block2[0].attn.kv.weight]))


def test_wrong_variant_names_the_mismatched_shapes(tmp_path):
    torch.save(MixVisionTransformer(arch='b1', num_layers=[2, 2, 2, 2]).state_dict(), tmp_path / 'b1.pth')
    with pytest.raises(ValueError) as info:
        _pretrained(tmp_path / 'b1.pth')
    message = str(info.value)
    assert 'mmseg layout' in message and 'layers.0.0.projection.weight: checkpoint (64, 3, 7, 7) vs model (32, 3, 7, 7)'\
        in message


def test_missing_and_extra_keys_are_named(nvlabs_imagenet, tmp_path):
    path, _ = nvlabs_imagenet
    state = torch.load(path, weights_only=True)
    del state['block4.1.mlp.fc2.weight']
    state['block4.2.norm1.weight'] = torch.ones(256)
    torch.save(state, tmp_path / 'broken.pth')
    with pytest.raises(ValueError) as info:
        _pretrained(tmp_path / 'broken.pth')
    message = str(info.value)
    assert 'nvlabs layout' in message
    assert 'lacks 1 key(s) the model needs: layers.3.1.1.ffn.layers.4.weight' in message
    assert 'layers.3.1.2.norm1.weight' in message


def test_unknown_layout_says_what_it_lacks_and_has_in_excess(tmp_path):
    torch.save({'conv1.weight': torch.zeros(8, 3, 3, 3), 'fc.weight': torch.zeros(10, 8)}, tmp_path / 'resnet.pth')
    with pytest.raises(ValueError) as info:
        _pretrained(tmp_path / 'resnet.pth')
    message = str(info.value)
    assert 'no MiT encoder in a known layout' in message
    assert 'It lacks' in message and 'layers.0.0.projection.weight' in message
    assert 'It has 2 key(s) the model does not have: conv1.weight, fc.weight' in message


def test_prefix_that_selects_nothing(nvlabs_imagenet):
    path, _ = nvlabs_imagenet
    with pytest.raises(ValueError, match=r"no key of .* starts with prefix='backbone.'"):
        _pretrained(path, prefix='backbone.')


def test_hf_config_with_other_heads_is_refused(hf_classifier, tmp_path):
    path, _ = hf_classifier
    config = json.loads((path / 'config.json').read_text())
    config['num_attention_heads'] = [1, 2, 4, 8]
    custom = tmp_path / 'custom'
    custom.mkdir()
    (custom / 'config.json').write_text(json.dumps(config))
    (custom / 'model.safetensors').write_bytes((path / 'model.safetensors').read_bytes())
    with pytest.raises(ValueError, match=r'num_attention_heads=\[1, 2, 4, 8\] \(model: \[1, 2, 5, 8\]\)'):
        _pretrained(custom)  # the tensor shapes fit B0, only config.json tells the heads apart


def test_extraction_reports_layout_and_dropped_heads(nvlabs_imagenet):
    path, _ = nvlabs_imagenet
    extraction = extract_mit_encoder(torch.load(path, weights_only=True))
    assert extraction.layout == 'nvlabs' and extraction.prefix == ''
    assert sorted(extraction.dropped) == ['head.bias', 'head.weight'] and not extraction.unused


def test_load_mit_pretrained_returns_what_it_found(hf_classifier):
    path, _ = hf_classifier
    extraction = load_mit_pretrained(MixVisionTransformer(arch='b0'), str(path))
    assert (extraction.layout, extraction.prefix) == ('huggingface', 'segformer.')
    assert sorted(extraction.dropped) == ['classifier.bias', 'classifier.weight']


@pytest.mark.parametrize('wrap', [
    lambda sd: {f'module.{k}': v for k, v in sd.items()},
    lambda sd: {f'model.{k}': v for k, v in sd.items()},
    lambda sd: {f'module.model.{k}': v for k, v in sd.items()},
    lambda sd: {'state_dict': {f'model.{k}': v for k, v in sd.items()}, 'meta': {}},
], ids=['module', 'model', 'module-model', 'state_dict-model'])
def test_wrapped_file_loads_alike_as_pretrained_and_through_the_converter(nvlabs_imagenet, tmp_path, wrap):
    """Every entry point unwraps a checkpoint with the same rules (mmseg_ext.checkpoint.reading.read_state_dict)."""
    path, reference = nvlabs_imagenet
    plain = torch.load(path, weights_only=True)
    wrapped = tmp_path / 'wrapped.pth'
    torch.save(wrap(plain), wrapped)
    expected = _pretrained(path).state_dict()
    loaded = _pretrained(wrapped).state_dict()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    tool = load_tool('model_converters/convert_checkpoint')
    assert tool.strip_prefixes(tool.read_source(str(wrapped))).keys() == plain.keys()


@pytest.mark.parametrize('prefix', ['module.', 'model.'])
def test_tools_check_and_load_wrapped_segmentor_checkpoints_alike(tmp_path, prefix):
    """test.py, infer.py, benchmark.py and export share weights_check's unwrapping, and load what it checked."""
    from mmseg_ext.checkpoint.weights_check import checkpoint_state_dict, load_weights
    from mmseg_ext.builder import build_segmentor
    config = REPO / 'configs' / '_demo_' / 'segformer-b0.py'
    source = randomize_(build_segmentor(config), seed=5)
    path = tmp_path / 'wrapped.pth'
    torch.save({'meta': {}, 'state_dict': {prefix + k: v for k, v in source.state_dict().items()}}, path)
    assert checkpoint_state_dict(torch.load(path, weights_only=True)).keys() == source.state_dict().keys()
    target = build_segmentor(config)
    assert load_weights(target, str(path)).fits
    assert all(torch.equal(target.state_dict()[key], value) for key, value in source.state_dict().items())
