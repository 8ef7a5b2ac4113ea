"""ONNX Runtime logits equal PyTorch's for every family: whole and slide mode, static and dynamic graphs,
through mmseg's test step (preprocessing, inference, resize to the original size)."""
import pytest

from mmseg_ext.deploy import DeployError

from utils import FAMILY_CONFIGS, batch, export, family_model, logits, onnx_segmentor, relative_difference, \
    with_test_cfg

TOLERANCE = 1e-4  # relative to the logit range
CROP, STRIDE = (64, 64), (48, 48)
SLIDE = dict(mode='slide', crop_size=CROP, stride=STRIDE)


@pytest.mark.parametrize('family', list(FAMILY_CONFIGS))
def test_onnxruntime_matches_pytorch(family, tmp_path):
    cfg, model = family_model(family)
    dynamic = export(model, cfg, tmp_path / 'dynamic.onnx', (64, 96), dynamic=True)
    static = export(model, cfg, tmp_path / 'static.onnx', CROP, dynamic=False)
    image = batch(96, 160, ori_shape=(100, 150))  # 2x3 overlapping windows; resized back to another size
    crop_image = batch(*CROP, seed=1)
    checks = [
        ('dynamic whole', dynamic, dict(mode='whole'), image),
        ('dynamic slide', dynamic, SLIDE, image),
        ('static slide', static, SLIDE, image),
        ('static whole', static, dict(mode='whole'), crop_image),
    ]
    for what, path, test_cfg, data in checks:
        expected = logits(with_test_cfg(model, test_cfg), data)
        actual = logits(onnx_segmentor(cfg, path, test_cfg), data)
        assert relative_difference(actual, expected) < TOLERANCE, what


def test_dynamic_graph_that_is_exact_only_at_its_example_size_is_refused(tmp_path):
    """mmseg's own MiT freezes its attention's reshape sizes in a trace: the export checks a dynamic graph
    at other sizes and refuses it rather than write a file that is wrong there."""
    cfg, model = family_model('ocr-mit-b0', cfg_options={'model.backbone.type': 'MixVisionTransformer'})
    assert cfg.model.backbone.type == 'MixVisionTransformer'
    with pytest.raises(DeployError, match='differs from PyTorch on input sizes other than the example 64x96'):
        export(model, cfg, tmp_path / 'dynamic.onnx', (64, 96), dynamic=True)


def test_padding_at_test_time_is_mmseg_padding(tmp_path):
    """A config whose preprocessor pads test images (size_divisor) pads the raw image with the pixel the
    graph normalises to pad_val, and the padding is cut off again, as mmseg does."""
    cfg, model = family_model('segformer-b0')
    cfg.model.data_preprocessor.test_cfg = dict(size_divisor=32)
    from mmseg.registry import MODELS as MMSEG_MODELS
    model.data_preprocessor = MMSEG_MODELS.build(cfg.model.data_preprocessor)
    path = export(model, cfg, tmp_path / 'dynamic.onnx', (64, 64), dynamic=True)
    data = batch(50, 70, ori_shape=(50, 70))  # padded to 64x96
    expected = logits(with_test_cfg(model, dict(mode='whole')), data)
    actual = logits(onnx_segmentor(cfg, path, dict(mode='whole')), data)
    assert actual.shape[-2:] == (50, 70)
    assert relative_difference(actual, expected) < TOLERANCE


def test_labels_graph_and_metadata(tmp_path):
    """``--output labels`` puts mmseg's argmax in the graph; the metadata carries what the runtime needs."""
    import torch

    from mmseg_ext.deploy import OnnxSegmentorSession
    from mmseg_ext.deploy.export import DeployableSegmentor
    cfg, model = family_model('erfnet-fcn')
    path = export(model, cfg, tmp_path / 'labels.onnx', (64, 64), dynamic=False, output='labels')
    session = OnnxSegmentorSession(str(path))
    image = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        expected = DeployableSegmentor(model)(image).argmax(1, keepdim=True)
    labels = session(image)
    assert labels.dtype == torch.uint8 and torch.equal(labels.long(), expected)
    meta = session.meta
    assert (meta.num_classes, meta.classes[0], meta.classes[-1], meta.palette[0]) == (19, 'road', 'bicycle',
                                                                                      [128, 64, 128])
    assert (meta.output, meta.shape, meta.mode, meta.bgr_to_rgb) == ('labels', (64, 64), 'whole', True)
    assert meta.mean == pytest.approx([123.675, 116.28, 103.53])
    with pytest.raises(DeployError, match='outputs labels; .* export with --output logits'):
        onnx_segmentor(cfg, path)
