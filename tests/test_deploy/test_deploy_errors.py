"""Bad input to the deployment path gets one clear error naming the bad value."""
import pytest
import torch
import torch.nn as nn

from utils import REPO, batch, export, family_model, logits, onnx_segmentor, run_tool
from mmseg_ext.checkpoint.weights_check import WeightsMismatchError, load_weights_strict
from mmseg_ext.deploy import DeployError, OnnxSegmentorSession
from mmseg_ext.deploy.export import DeployableSegmentor, export_onnx


@pytest.fixture(scope='module')
def erfnet(tmp_path_factory):
    """ERFNet (FCN head) and its static 64x64 export."""
    cfg, model = family_model('erfnet-fcn')
    path = export(model, cfg, tmp_path_factory.mktemp('onnx') / 'static.onnx', (64, 64), dynamic=False)
    return cfg, model, path


class _UnsupportedBlock(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.special.zeta(x, x)  # no ONNX symbolic exists for aten::special_zeta


def test_unexportable_module_is_named_with_its_operator(erfnet, tmp_path):
    cfg, model, _ = erfnet
    model.decode_head.conv_seg = nn.Sequential(model.decode_head.conv_seg, _UnsupportedBlock())
    try:
        with pytest.raises(DeployError) as error:
            export_onnx(DeployableSegmentor(model), str(tmp_path / 'x.onnx'), (64, 64))
    finally:
        model.decode_head.conv_seg = model.decode_head.conv_seg[0]
    message = str(error.value)
    assert 'aten::special_zeta' in message and 'decode_head.conv_seg.1 (_UnsupportedBlock)' in message


def test_image_that_does_not_fit_a_static_graph_is_refused_with_both_sizes(erfnet):
    cfg, _, path = erfnet
    segmentor = onnx_segmentor(cfg, path, dict(mode='whole'))
    with pytest.raises(DeployError, match=r'an input of 64x96 does not fit the static graph of 64x64'):
        logits(segmentor, batch(64, 96))


def test_slide_crop_that_does_not_fit_a_static_graph_is_refused(erfnet):
    cfg, _, path = erfnet
    with pytest.raises(DeployError, match=r'takes 64x64 inputs but the config slides 96x96 windows'):
        onnx_segmentor(cfg, path, dict(mode='slide', crop_size=(96, 96), stride=(64, 64)))


def test_class_count_that_differs_from_the_config_is_refused(erfnet):
    cfg, _, path = erfnet
    cfg = cfg.copy()
    cfg.model = cfg.model.copy()
    cfg.model.decode_head = dict(cfg.model.decode_head, num_classes=7)
    with pytest.raises(DeployError, match=r'predicts 19 classes but the config\'s decode head has 7'):
        onnx_segmentor(cfg, path)


def test_normalisation_that_differs_from_the_config_is_refused(erfnet):
    cfg, _, path = erfnet
    cfg = cfg.copy()
    cfg.model = cfg.model.copy()
    cfg.model.data_preprocessor = dict(cfg.model.data_preprocessor, mean=[0.0, 0.0, 0.0])
    with pytest.raises(DeployError, match=r'normalises with mean \[123.675'):
        onnx_segmentor(cfg, path)


def test_missing_and_corrupt_files_give_one_line(tmp_path, erfnet):
    with pytest.raises(DeployError, match='ONNX file not found: .*missing.onnx'):
        OnnxSegmentorSession(str(tmp_path / 'missing.onnx'))
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(erfnet[2].read_bytes()[:5000])  # truncated
    with pytest.raises(DeployError, match=f'cannot load ONNX file {corrupt}') as error:
        OnnxSegmentorSession(str(corrupt))
    assert '\n' not in str(error.value)


def test_test_tool_refuses_a_corrupt_file_in_one_line(tmp_path, trained_run):
    config, _, _ = trained_run
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'\x08\x07garbage' * 100)
    proc = run_tool(['test.py', config, corrupt, '--work-dir', tmp_path / 'w'], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f'error: cannot load ONNX file {corrupt}')


def test_checkpoint_that_does_not_fit_is_refused_listing_keys(erfnet, tmp_path):
    _, model, _ = erfnet
    state = dict(model.state_dict())
    state.pop('decode_head.conv_seg.weight')
    state['backbone.extra.weight'] = torch.zeros(1)
    torch.save(dict(state_dict=state), tmp_path / 'bad.pth')
    with pytest.raises(WeightsMismatchError, match=r'1 missing \(decode_head.conv_seg.weight\); 1 unexpected '
                       r'\(backbone.extra.weight\)'):
        load_weights_strict(model, str(tmp_path / 'bad.pth'))


def test_onnx_model_is_not_run_distributed(erfnet):
    from mmseg_ext.deploy import use_onnx_model
    cfg, _, path = erfnet
    cfg = cfg.copy()
    cfg.launcher = 'pytorch'
    with pytest.raises(DeployError, match='evaluated in one process .* not with --launcher pytorch'):
        use_onnx_model(cfg, str(path))


def test_int8_export_without_calibration_data_says_where_to_point_it(tmp_path, capsys):
    """Refused in one line, before the export, naming the missing folder and the option that sets it."""
    from utils import load_tool
    config = REPO / 'configs' / 'erfnet' / 'erfnet_fcn_4xb4-160k_cityscapes-512x1024.py'
    absent = tmp_path / 'absent'
    export_onnx = load_tool('deployment/export_onnx')
    code = export_onnx.main([str(config), str(tmp_path / 'no.pth'), '--out', str(tmp_path / 'x.onnx'),
                             '--quantize', 'int8', '--cfg-options', f'train_dataloader.dataset.data_root={absent}'])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert str(absent / 'leftImg8bit' / 'train') in error
    assert '--cfg-options train_dataloader.dataset.data_root=DIR' in error
    assert not (tmp_path / 'x_fp32.onnx').exists()
