"""The authors' HRNet-OCR checkpoint layout -> mmseg HRNet + FCNHead + mmseg_ext.OCRHead.

The authors' network is ``hrnet_ocr_reference.HighResolutionNetOCR`` (their module names, written
independently of mmseg and the plugin); converted checkpoints must reproduce its logits.
"""
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hrnet_ocr_reference import TINY, W18_SMALL, HighResolutionNetOCR
from mmengine.config import Config, ConfigDict
from mmengine.registry import init_default_scope

from mmseg_ext.builder import build_segmentor
from mmseg_ext.checkpoint.reading import strip_prefixes
from mmseg_ext.converters import detect_converter
from mmseg_ext.converters.hrnet_ocr import AUTHORS_CONFIG, HRNetOCRConverter, infer_architecture
from utils import REPO, randomize_conv_bn_



def authors_network(stages=TINY, num_classes=5, mid_channels=16, key_channels=8, seed=0, **kwargs):
    return randomize_conv_bn_(HighResolutionNetOCR(stages, num_classes=num_classes, mid_channels=mid_channels,
                                          key_channels=key_channels, **kwargs), seed=seed, eval_mode=True)


def build_plugin_model(model_cfg: dict) -> torch.nn.Module:
    init_default_scope('mmseg')
    cfg = ConfigDict(model_cfg)
    cfg.setdefault('data_preprocessor', dict(type='SegDataPreProcessor'))
    return build_segmentor(cfg).eval()


def plugin_logits(model, image):
    with torch.no_grad():
        features = model.extract_feat(image)
        aux = model.decode_head[0].forward(features)
        return aux, model.decode_head[1].forward(features, aux)


def convert(state_dict):
    return detect_converter(strip_prefixes(state_dict)).convert(strip_prefixes(state_dict))


@pytest.mark.parametrize('stages, mid, key, prefix, size', [
    (TINY, 16, 8, 'model.', (64, 128)),
    (TINY, 16, 8, 'module.', (72, 100)),  # not a multiple of 32: fuse resizes to odd sizes
    (W18_SMALL, 64, 32, 'module.model.', (64, 128)),
])
def test_converted_logits_equal_the_authors(stages, mid, key, prefix, size):
    authors = authors_network(stages, mid_channels=mid, key_channels=key)
    checkpoint = {prefix + name: value for name, value in authors.state_dict().items()}
    result = convert(checkpoint)
    architecture = infer_architecture(strip_prefixes(checkpoint))
    assert architecture.num_classes == 5 and architecture.mid_channels == mid
    assert architecture.key_channels == key
    model = build_plugin_model(architecture.model_config())
    model.load_state_dict(result.state_dict, strict=True)

    image = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_aux, expected = authors(image)
    aux, logits = plugin_logits(model, image)
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(aux, expected_aux, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)

    # The whole segmentor, including the authors' final align_corners=True resize.
    with torch.no_grad():
        segmentor = model.encode_decode(image, [dict(img_shape=size)] * 2)
    upsampled = F.interpolate(expected, size=size, mode='bilinear', align_corners=True)
    torch.testing.assert_close(segmentor, upsampled, atol=1e-4, rtol=0)


def test_head_biases_are_folded_into_bn_running_means():
    authors = authors_network()
    state = authors.state_dict()
    converted = convert(state).state_dict
    torch.testing.assert_close(converted['decode_head.0.convs.0.bn.running_mean'],
                               state['aux_head.1.running_mean'] - state['aux_head.0.bias'])
    torch.testing.assert_close(converted['decode_head.1.bottleneck.bn.running_mean'],
                               state['conv3x3_ocr.1.running_mean'] - state['conv3x3_ocr.0.bias'])
    assert state['aux_head.0.bias'].abs().max() > 0.1  # the fold is exercised


def test_mmseg_numerics_would_not_match():
    """Guards the test above: mmseg's align_corners=False HRNet gives visibly different logits."""
    authors = authors_network()
    architecture = infer_architecture(authors.state_dict())
    config = architecture.model_config()
    config['backbone']['align_corners'] = False
    model = build_plugin_model(config)
    model.load_state_dict(convert(authors.state_dict()).state_dict, strict=True)
    image = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, expected = authors(image)
    _, logits = plugin_logits(model, image)
    assert (logits - expected).abs().max() > 1e-2


def test_checkpoints_without_num_batches_tracked_convert():
    authors = authors_network()
    state = {key: value for key, value in authors.state_dict().items() if not key.endswith('num_batches_tracked')}
    model = build_plugin_model(infer_architecture(state).model_config())
    model.load_state_dict(convert(state).state_dict, strict=True)


def test_the_authors_w48_cityscapes_network_maps_to_the_recipe_config():
    """Architecture inference on the released W48 layout, from shapes only (no 70M-parameter net)."""
    stages = {'STAGE1': (1, 'BOTTLENECK', (4, ), (64, )), 'STAGE2': (1, 'BASIC', (4, 4), (48, 96)),
              'STAGE3': (4, 'BASIC', (4, 4, 4), (48, 96, 192)),
              'STAGE4': (3, 'BASIC', (4, 4, 4, 4), (48, 96, 192, 384))}
    with torch.device('meta'):
        authors = HighResolutionNetOCR(stages, num_classes=19)
    state = authors.state_dict()
    assert state['aux_head.0.weight'].shape == (720, 720, 1, 1)
    architecture = infer_architecture(state)
    assert architecture.overrides_of_authors_config() == []
    recipe = Config.fromfile(osp.join(REPO, AUTHORS_CONFIG)).model
    generated = architecture.model_config()
    assert recipe.backbone.extra == generated['backbone']['extra']
    for built, wanted in zip(recipe.decode_head, generated['decode_head']):
        for name, value in wanted.items():
            if name != 'loss_decode':
                assert built[name] == value, name
    assert recipe.backbone.type == 'mmseg_ext.HRNet' and recipe.backbone.align_corners is True


def test_other_layouts_and_damaged_checkpoints_are_refused():
    converter = HRNetOCRConverter()
    state = authors_network().state_dict()
    assert converter.matches(state)
    mmseg_layout = {'backbone.' + key: value for key, value in state.items()}
    assert not converter.matches(mmseg_layout)
    assert "no 'cls_head.weight'" in converter.mismatches(mmseg_layout)

    extra = dict(state, **{'ocr_distri_head.extra_layer.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match=r'1 keys .* no place .*ocr_distri_head\.extra_layer\.weight'):
        converter.convert(extra)
    missing = {key: value for key, value in state.items() if key != 'conv3x3_ocr.1.running_var'}
    with pytest.raises(ValueError, match=r"lacks 'conv3x3_ocr\.1\.running_var'"):
        converter.convert(missing)
    no_bias = {key: value for key, value in state.items() if key != 'aux_head.0.bias'}
    with pytest.raises(ValueError, match=r"lacks \['aux_head\.0\.bias'\]"):
        converter.convert(no_bias)


@pytest.mark.slow
def test_convert_checkpoint_cli_end_to_end(tmp_path):
    """tools/model_converters/convert_checkpoint.py on an authors'-layout file; the printed config and options
    rebuild it."""
    script = osp.join(REPO, 'tools', 'model_converters', 'convert_checkpoint.py')
    if not osp.exists(script):
        pytest.skip('tools/model_converters/convert_checkpoint.py is not in this checkout')
    authors = authors_network()
    source, destination = tmp_path / 'hrnet_ocr_authors.pth', tmp_path / 'converted.pth'
    torch.save({'model.' + key: value for key, value in authors.state_dict().items()}, source)
    completed = subprocess.run([sys.executable, script, str(source), str(destination)], cwd=REPO,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert 'detected layout: hrnet-ocr' in lines
    assert lines[-1] == AUTHORS_CONFIG
    options_note = next(line for line in lines if '--cfg-options' in line)
    options = options_note.split('--cfg-options ', 1)[1].split(' and a dataset')[0].split()

    from mmengine.config import DictAction
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg = Config.fromfile(osp.join(REPO, lines[-1]))
    cfg.merge_from_dict(parser.parse_args(['--cfg-options'] + options).cfg_options)
    cfg.model.pretrained = None
    model = build_plugin_model(cfg.model.to_dict())
    checkpoint = torch.load(destination, map_location='cpu', weights_only=True)
    model.load_state_dict(checkpoint['state_dict'], strict=True)

    image = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected_aux, expected = authors(image)
    aux, logits = plugin_logits(model, image)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(aux, expected_aux, atol=1e-4, rtol=0)
