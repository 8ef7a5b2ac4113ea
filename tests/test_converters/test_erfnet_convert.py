"""tools/model_converters/convert_checkpoint.py on the ERFNet authors' layout, end to end against a reference
network."""
import os.path as osp

import pytest
import torch
from erfnet_reference import AuthorsERFNet
from mmengine.runner import load_checkpoint

from mmseg_ext.builder import build_segmentor
from mmseg_ext.checkpoint.reading import strip_prefixes
from mmseg_ext.converters import registered_converters
from mmseg_ext.converters.erfnet_authors import ERFNetAuthorsConverter
from utils import REPO, load_tool, max_abs_diff, randomize_batch_norms

convert_tool = load_tool('model_converters/convert_checkpoint')


def _authors_network(num_classes: int = 20, seed: int = 0) -> AuthorsERFNet:
    torch.manual_seed(seed)
    return randomize_batch_norms(AuthorsERFNet(num_classes), seed).eval()


def _save_as_data_parallel(state_dict: dict, path: str) -> str:
    """What the authors saved: ``nn.DataParallel(model).state_dict()``, every key prefixed ``module.``."""
    torch.save({f'module.{key}': value for key, value in state_dict.items()}, path)
    return path


def _run(capsys, *argv: str):
    code = convert_tool.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


def _image(height: int, width: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(7)).float()


def _segmentor_logits(config: str, checkpoint: str, image: torch.Tensor) -> torch.Tensor:
    model = build_segmentor(osp.join(REPO, config))
    load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    model.eval()
    inputs = model.data_preprocessor(dict(inputs=[image]), False)['inputs']
    metas = [dict(img_shape=image.shape[1:], ori_shape=image.shape[1:], pad_shape=image.shape[1:])]
    with torch.no_grad():
        return model.encode_decode(inputs, metas)


def _authors_logits(network: AuthorsERFNet, image: torch.Tensor, only_encode: bool = False) -> torch.Tensor:
    rgb_01 = image.flip(0)[None] / 255.  # the image is BGR like mmseg's loader; the authors feed RGB in [0, 1]
    with torch.no_grad():
        return network(rgb_01, only_encode=only_encode)


def test_registered():
    assert isinstance(registered_converters()['erfnet-authors'], ERFNetAuthorsConverter)


def test_released_20_output_model_end_to_end(tmp_path, capsys):
    authors = _authors_network(20)
    source = _save_as_data_parallel(authors.state_dict(), str(tmp_path / 'erfnet_pretrained.pth'))
    destination = str(tmp_path / 'converted' / 'erfnet.pth')
    code, out, err = _run(capsys, source, destination)
    assert code == 0, err
    config = out[-1]
    assert config == 'configs/erfnet/erfnet_paper_1xb6-150e_cityscapes-512x1024.py'
    assert osp.isfile(osp.join(REPO, config))
    assert any('Output 19 was dropped' in line for line in out)

    saved = torch.load(destination, weights_only=True)
    assert saved['meta']['converter'] == 'erfnet-authors' and saved['meta']['config'] == config
    image = _image(64, 128)
    expected = _authors_logits(authors, image)
    actual = _segmentor_logits(config, destination, image)
    assert expected.shape == (1, 20, 64, 128) and actual.shape == (1, 19, 64, 128)
    assert expected.abs().mean() > 0.05
    assert max_abs_diff(actual, expected[:, :19]) <= 1e-4


def test_19_output_model_keeps_every_output_and_legacy_files_without_counters(tmp_path, capsys):
    authors = _authors_network(19, seed=1)
    state_dict = {k: v for k, v in authors.state_dict().items() if not k.endswith('num_batches_tracked')}
    source = _save_as_data_parallel(state_dict, str(tmp_path / 'model_best.pth'))
    destination = str(tmp_path / 'erfnet19.pth')
    code, out, err = _run(capsys, source, destination)
    assert code == 0, err
    assert any('num_batches_tracked' in line for line in out)
    assert not any('dropped' in line for line in out if 'Output' in line)
    image = _image(48, 96)
    actual = _segmentor_logits(out[-1], destination, image)
    assert max_abs_diff(actual, _authors_logits(authors, image)) <= 1e-4


def test_encoder_only_checkpoint_uses_encoder_stage_config(tmp_path, capsys):
    authors = _authors_network(20, seed=2)
    encoder_state = {k: v for k, v in authors.state_dict().items() if k.startswith('encoder.')}
    source = str(tmp_path / 'encoder.pth')
    torch.save({'state_dict': encoder_state, 'epoch': 150}, source)  # a training bundle, unprefixed
    destination = str(tmp_path / 'encoder_converted.pth')
    code, out, err = _run(capsys, source, destination)
    assert code == 0, err
    assert out[-1] == 'configs/erfnet/erfnet_paper-encoder_1xb6-150e_cityscapes-512x1024.py'
    image = _image(64, 64)
    expected = _authors_logits(authors, image, only_encode=True)  # 1/8 resolution
    model = build_segmentor(osp.join(REPO, out[-1]))
    load_checkpoint(model, destination, map_location='cpu', strict=True)
    model.eval()
    inputs = model.data_preprocessor(dict(inputs=[image]), False)['inputs']
    with torch.no_grad():
        actual = model.decode_head(model.extract_feat(inputs))
    assert max_abs_diff(actual, expected[:, :19]) <= 1e-4


def test_plugin_works_on_sizes_the_authors_network_cannot_take(tmp_path, capsys):
    authors = _authors_network(20)
    source = _save_as_data_parallel(authors.state_dict(), str(tmp_path / 'a.pth'))
    destination = str(tmp_path / 'b.pth')
    code, out, _ = _run(capsys, source, destination)
    assert code == 0
    image = _image(67, 101)
    with pytest.raises(RuntimeError):
        _authors_logits(authors, image)
    assert _segmentor_logits(out[-1], destination, image).shape == (1, 19, 67, 101)


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    code, _, err = _run(capsys, str(tmp_path / 'nope.pth'), str(tmp_path / 'out.pth'))
    assert code == 2
    assert 'source checkpoint not found' in err and 'nope.pth' in err
    assert not (tmp_path / 'out.pth').exists()


class _Payload:
    """Stands for arbitrary pickled code in a checkpoint."""


def test_checkpoints_that_would_run_code_are_refused(tmp_path, capsys):
    source = str(tmp_path / 'unsafe.pth')
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'payload': _Payload()}, source)
    code, _, err = _run(capsys, source, str(tmp_path / 'out.pth'))
    assert code == 2
    assert 'error: cannot read' in err and 'unsafe.pth' in err and 'could run code' in err
    assert not (tmp_path / 'out.pth').exists()


def test_help_names_the_known_layouts(capsys):
    with pytest.raises(SystemExit):
        convert_tool.main(['--help'])
    assert 'erfnet-authors' in capsys.readouterr().out


def test_unknown_layout_lists_known_layouts_and_mismatched_keys(tmp_path, capsys):
    source = str(tmp_path / 'other.pth')
    torch.save({'backbone.stem.weight': torch.zeros(3), 'head.fc.weight': torch.zeros(2)}, source)
    code, _, err = _run(capsys, source, str(tmp_path / 'out.pth'))
    assert code == 2
    assert 'fits none of the known layouts' in err
    assert 'erfnet-authors' in err
    assert 'missing keys, e.g. encoder.initial_block.conv.weight' in err
    assert 'unexpected keys, e.g. backbone.stem.weight, head.fc.weight' in err


def test_mmseg_layout_is_not_taken_for_the_authors_layout():
    from mmseg_ext.models.backbones.erfnet import ERFNet
    state_dict = {f'backbone.{k}': v for k, v in ERFNet().state_dict().items()}
    assert not ERFNetAuthorsConverter().matches(state_dict)


def test_wrong_shapes_and_extra_keys_are_named(tmp_path, capsys):
    state_dict = _authors_network(20).state_dict()
    state_dict['encoder.layers.7.conv3x1_1.weight'] = torch.zeros(128, 128, 3, 3)
    state_dict['decoder.extra.weight'] = torch.zeros(1)
    source = _save_as_data_parallel(state_dict, str(tmp_path / 'bad.pth'))
    code, _, err = _run(capsys, source, str(tmp_path / 'out.pth'))
    assert code == 2
    assert 'erfnet-authors' in err
    assert 'encoder.layers.7.conv3x1_1.weight is (128, 128, 3, 3), expected (128, 128, 3, 1)' in err
    assert 'unexpected keys, e.g. decoder.extra.weight' in err


def test_missing_keys_are_named():
    state_dict = strip_prefixes({f'module.{k}': v for k, v in _authors_network(20).state_dict().items()})
    del state_dict['decoder.layers.3.bn.running_var']
    with pytest.raises(ValueError, match=r'1 missing keys, e\.g\. decoder\.layers\.3\.bn\.running_var'):
        ERFNetAuthorsConverter().convert(state_dict)


def test_converters_name_packaged_configs_outside_a_checkout(tmp_path, monkeypatch):
    """Installed without the repository, a converter names its config as ``mmseg_ext::...``, which resolves
    to the copy shipped in the package; in a checkout it names ``configs/...`` as before."""
    from mmseg_ext.converters import base
    relative = 'erfnet/erfnet_paper_1xb6-150e_cityscapes-512x1024.py'
    assert base.config_reference(relative) == f'configs/{relative}'
    monkeypatch.setattr(base, '_PACKAGE_PARENT', str(tmp_path))  # a site-packages without configs/
    reference = base.config_reference(relative)
    assert reference == f'mmseg_ext::{relative}'
    assert osp.samefile(base.config_file(reference), REPO / 'configs' / relative)
