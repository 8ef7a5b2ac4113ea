"""Weights must fit the model: counts, examples and the likely cause, or an explicit partial load."""
import pytest
import torch
from erfnet_reference import AuthorsERFNet
from mmengine.registry import init_default_scope
from segformer_reference import NVlabsSegFormer

from mmseg_ext.builder import build_segmentor
from mmseg_ext.checkpoint.weights_check import WeightsMismatchError, check_weights, compare_weights, load_weights

MIT_WIDTHS = {'b0': [32, 64, 160, 256], 'b1': [64, 128, 320, 512]}


def _build(model_cfg: dict) -> torch.nn.Module:
    init_default_scope('mmseg')
    return build_segmentor(model_cfg).eval()


def segformer(arch: str = 'b0', num_classes: int = 19) -> torch.nn.Module:
    return _build(dict(type='EncoderDecoder', backbone=dict(type='mmseg_ext.MixVisionTransformer', arch=arch),
                       decode_head=dict(type='mmseg_ext.SegformerHead', in_channels=MIT_WIDTHS[arch],
                                        in_index=[0, 1, 2, 3], channels=32, num_classes=num_classes)))


def erfnet() -> torch.nn.Module:
    return _build(dict(type='EncoderDecoder', backbone=dict(type='mmseg_ext.ERFNet'),
                       decode_head=dict(type='mmseg_ext.ERFNetHead', in_channels=16, num_classes=19)))


def _save(tmp_path, state_dict, name='weights.pth'):
    path = tmp_path / name
    torch.save({'meta': {}, 'state_dict': state_dict}, path)
    return str(path)


def _refusal(model, path) -> str:
    with pytest.raises(WeightsMismatchError) as caught:
        load_weights(model, path)
    message = str(caught.value)
    assert '\n' not in message and path in message and '--allow-partial-weights' in message
    return message


def test_fitting_checkpoint_loads_every_tensor(tmp_path):
    source, target = segformer(), segformer()
    summary = load_weights(target, _save(tmp_path, source.state_dict()))
    assert summary.fits and summary.matched == summary.model_tensors == len(source.state_dict())
    assert summary.describe().endswith(f'fits the model (all {summary.model_tensors} tensors, names and shapes)')
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_missing_batch_norm_counters_are_no_mismatch(tmp_path):
    state = {key: value for key, value in segformer().state_dict().items() if not key.endswith('num_batches_tracked')}
    assert load_weights(segformer(), _save(tmp_path, state)).fits


def test_another_family_is_named(tmp_path):
    message = _refusal(segformer(), _save(tmp_path, erfnet().state_dict()))
    assert "another model family: the checkpoint's backbone is ERFNet, the model's MiT (SegFormer)" in message
    assert 'missing (' in message and 'unexpected (' in message


def test_another_mit_variant_is_named_with_counts_and_examples(tmp_path):
    model = segformer('b0')
    message = _refusal(model, _save(tmp_path, segformer('b1').state_dict()))
    assert 'another MiT variant: the checkpoint is MiT-B1, the model MiT-B0 (use a mit-b1 config)' in message
    summary = compare_weights(model, segformer('b1').state_dict())
    assert f'{len(summary.shape_mismatches)} of another shape (' in message
    key, theirs, ours = summary.shape_mismatches[0]
    assert f'{key} {list(theirs)} in the checkpoint, {list(ours)} in the model' in message


def test_another_class_count_is_named(tmp_path):
    message = _refusal(segformer(num_classes=19), _save(tmp_path, segformer(num_classes=150).state_dict()))
    assert 'another class count: the checkpoint predicts 150 classes, the model 19' in message


def test_backbone_only_file_is_named(tmp_path):
    model = segformer()
    path = tmp_path / 'mit_b0_backbone.pth'
    torch.save(model.backbone.state_dict(), path)
    message = _refusal(model, str(path))
    assert 'a backbone-only (pretrained encoder) file' in message and "init_cfg=dict(type='Pretrained'" in message


@pytest.mark.parametrize('make_state, layout, model', [
    (lambda: NVlabsSegFormer().state_dict(), 'segformer-nvlabs', segformer),
    (lambda: {f'module.{key}': value for key, value in AuthorsERFNet(20).state_dict().items()}, 'erfnet', erfnet),
])
def test_published_layout_names_the_converting_command(make_state, layout, model, tmp_path):
    path = _save(tmp_path, make_state())
    message = _refusal(model(), path)
    assert f'still in the published {layout}' in message
    assert f'`python tools/model_converters/convert_checkpoint.py {path} CONVERTED.pth`' in message


def test_partial_load_is_explicit_and_keeps_the_rest(tmp_path):
    model, source = segformer(num_classes=19), segformer(num_classes=150)
    before = model.decode_head.conv_seg.weight.clone()
    summary = load_weights(model, _save(tmp_path, source.state_dict()), allow_partial=True)
    assert not summary.fits and len(summary.shape_mismatches) == 2  # conv_seg weight and bias
    assert torch.equal(model.decode_head.conv_seg.weight, before)
    assert torch.equal(model.backbone.layers[0][0].projection.weight, source.backbone.layers[0][0].projection.weight)


def test_check_without_partial_flag_names_no_flag():
    with pytest.raises(WeightsMismatchError) as caught:
        check_weights(segformer(), {'x': torch.zeros(1)}, 'a.pth', partial_flag=None)
    assert '--allow-partial-weights' not in str(caught.value)
