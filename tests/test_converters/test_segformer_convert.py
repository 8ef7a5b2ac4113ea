"""NVlabs and Hugging Face SegFormer checkpoints through tools/model_converters/convert_checkpoint.py, end to end,
and the SegFormer configs."""
import glob
import json
import os.path as osp
import re

import pytest
import torch
from segformer_reference import NVlabsMiT, NVlabsSegFormer

from mmseg_ext.builder import build_segmentor
from mmseg_ext.converters import detect_converter
from utils import REPO, load_tool, randomize_, saved_hf_segformer

transformers = pytest.importorskip('transformers')

IMAGES = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))


CLI = load_tool('model_converters/convert_checkpoint')


def _run(capsys, *argv):
    code = CLI.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


def _build(config: str):
    return build_segmentor(osp.join(REPO, config))


def _plugin_logits(config: str, checkpoint) -> torch.Tensor:
    model = _build(config)
    state = torch.load(checkpoint, weights_only=True)
    model.load_state_dict(state['state_dict'], strict=True)
    model.eval()
    with torch.no_grad():
        return model.decode_head(model.backbone(IMAGES))


def _relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize('arch,embed_dims,depths,width,classes,config', [
    ('b0', (32, 64, 160, 256), (2, 2, 2, 2), 256, 19,
     'configs/segformer/segformer-official_mit-b0_8xb1-160k_cityscapes-1024x1024.py'),
    ('b2', (64, 128, 320, 512), (3, 4, 6, 3), 768, 150,
     'configs/segformer/segformer-official_mit-b2_8xb2-160k_ade20k-512x512.py'),
])
def test_nvlabs_segmentation_checkpoint(arch, embed_dims, depths, width, classes, config, tmp_path, capsys):
    torch.manual_seed(0)
    reference = randomize_(NVlabsSegFormer(embed_dims, depths, width, classes), seed=3).eval()
    torch.save({'meta': {'iter': 160000}, 'state_dict': reference.state_dict()}, tmp_path / 'nvlabs.pth')
    code, out, err = _run(capsys, tmp_path / 'nvlabs.pth', tmp_path / 'converted.pth')
    assert code == 0, err
    assert 'detected layout: segformer-nvlabs' in out and out[-1] == config
    assert any('dropped decode_head.conv_seg.weight' in line for line in out)
    with torch.no_grad():
        expected = reference(IMAGES)
    assert _relative_difference(_plugin_logits(out[-1], tmp_path / 'converted.pth'), expected) < 1e-3


@pytest.fixture(scope='module')
def hf_b0_ade(tmp_path_factory):
    return saved_hf_segformer(tmp_path_factory.mktemp('hf') / 'segformer-b0-ade', 'SegformerForSemanticSegmentation', 150)


@pytest.mark.parametrize('as_file', [False, True])
def test_hf_semantic_segmentation_checkpoint(hf_b0_ade, as_file, tmp_path, capsys):
    path, reference = hf_b0_ade
    source = path / 'model.safetensors' if as_file else path
    code, out, err = _run(capsys, source, tmp_path / 'converted.pth')
    assert code == 0, err
    assert 'detected layout: segformer-huggingface' in out
    assert out[-1] == 'configs/segformer/segformer-official_mit-b0_8xb2-160k_ade20k-512x512.py'
    with torch.no_grad():
        expected = reference(pixel_values=IMAGES).logits
    assert _relative_difference(_plugin_logits(out[-1], tmp_path / 'converted.pth'), expected) < 1e-3


def test_hf_config_with_unpublished_heads_is_refused(hf_b0_ade, tmp_path, capsys):
    path, _ = hf_b0_ade
    config = json.loads((path / 'config.json').read_text())
    config['num_attention_heads'] = [1, 2, 4, 8]
    (tmp_path / 'config.json').write_text(json.dumps(config))
    (tmp_path / 'model.safetensors').write_bytes((path / 'model.safetensors').read_bytes())
    code, out, err = _run(capsys, tmp_path, tmp_path / 'converted.pth')
    assert code == 2 and 'num_attention_heads=[1, 2, 4, 8] (published: [1, 2, 5, 8])' in err
    assert not (tmp_path / 'converted.pth').exists()


def test_encoder_only_checkpoint_is_pointed_to_init_cfg(tmp_path, capsys):
    torch.save(NVlabsMiT().state_dict(), tmp_path / 'mit_b0.pth')
    code, _, err = _run(capsys, tmp_path / 'mit_b0.pth', tmp_path / 'converted.pth')
    assert code == 2 and 'fits none of the known layouts' in err
    assert "encoder-only (ImageNet) MiT checkpoint: use it directly as backbone init_cfg" in err


@pytest.mark.parametrize('change,message', [
    (lambda state: state.update({'decode_head.linear_pred.weight': torch.zeros(7, 256, 1, 1),
                                 'decode_head.linear_pred.bias': torch.zeros(7)}),
     'the classifier has 7 classes; the repository has official-decoder configs for 19 (Cityscapes), 150 (ADE20K)'),
    (lambda state: state.pop('decode_head.linear_c3.proj.bias'), 'the decoder lacks decode_head.linear_c3.proj.bias'),
    (lambda state: state.update({'auxiliary_head.conv_seg.weight': torch.zeros(19, 64, 1, 1)}),
     'keys outside the encoder and decoder: auxiliary_head.conv_seg.weight'),
    (lambda state: state.pop('backbone.block2.1.attn.kv.weight'),
     'unknown encoder keys: backbone.block2.1.attn.q.weight'),
])
def test_mismatched_nvlabs_checkpoints_are_refused(change, message, tmp_path, capsys):
    state = NVlabsSegFormer().state_dict()
    change(state)
    torch.save({'state_dict': state}, tmp_path / 'nvlabs.pth')
    code, _, err = _run(capsys, tmp_path / 'nvlabs.pth', tmp_path / 'converted.pth')
    assert code == 2 and message in err


def test_unpublished_variant_and_width_are_refused():
    converter = detect_converter(NVlabsSegFormer().state_dict())
    with pytest.raises(ValueError, match=r'not a published MiT variant .*depths.: \[1, 2, 2, 2\]'):
        converter.convert(NVlabsSegFormer(depths=(1, 2, 2, 2)).state_dict())
    with pytest.raises(ValueError, match='the decoder is 128 wide; the official MiT-B0 configs use 256'):
        converter.convert(NVlabsSegFormer(decoder_dim=128).state_dict())


CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'segformer', '*.py')))


def test_every_variant_dataset_and_decoder_has_a_config():
    names = {osp.basename(path) for path in CONFIGS}
    for arch in ('b0', 'b1', 'b2', 'b3', 'b4', 'b5'):
        for decoder in ('segformer', 'segformer-official'):
            assert f'{decoder}_mit-{arch}_8xb1-160k_cityscapes-1024x1024.py' in names
            assert f'{decoder}_mit-{arch}_8xb2-160k_ade20k-512x512.py' in names


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_recipe_and_target(path):
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    name = osp.basename(path)
    arch = re.search(r'mit-(b\d)', name)[1]
    header = open(path).read().split('\n_base_')[0]
    assert re.search(r'\d\d\.\d+ mIoU', header), 'the header names no published figure'
    backbone, head = cfg.model.backbone, cfg.model.decode_head
    assert backbone.type == 'mmseg_ext.MixVisionTransformer' and backbone.arch == arch
    assert f'mit_{arch}_' in backbone.init_cfg.checkpoint
    assert head.type == 'mmseg_ext.SegformerHead'
    assert head.in_channels == ([32, 64, 160, 256] if arch == 'b0' else [64, 128, 320, 512])
    official = name.startswith('segformer-official')
    assert head.get('head_style', 'mmseg') == ('official' if official else 'mmseg')
    assert head.channels == ((256 if arch in ('b0', 'b1') else 768) if official else 256)
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == {'norm': dict(decay_mult=0.), 'head': dict(lr_mult=10.)}
    assert [s.type for s in cfg.param_scheduler] == ['LinearLR', 'PolyLR'] and cfg.train_cfg.max_iters == 160000
    if 'cityscapes' in name:
        assert head.num_classes == 19
        assert cfg.model.test_cfg == dict(mode='slide', crop_size=(1024, 1024), stride=(768, 768))
        assert cfg.train_dataloader.batch_size == 1
    else:
        assert head.num_classes == 150 and cfg.model.test_cfg.mode == 'whole'
        assert cfg.train_dataloader.batch_size == 2 and cfg.model.data_preprocessor.size == (512, 512)


def test_b0_configs_and_demo_config_build():
    for config in ('configs/segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py',
                   'configs/segformer/segformer-official_mit-b0_8xb2-160k_ade20k-512x512.py',
                   'configs/_demo_/segformer-b0.py'):
        model = _build(config).eval()
        with torch.no_grad():
            logits = model.decode_head(model.backbone(IMAGES))
        assert logits.shape[1] in (19, 150) and logits.shape[2:] == (16, 24)
