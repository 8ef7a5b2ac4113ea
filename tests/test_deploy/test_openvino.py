"""OpenVINO runs the exported file as ONNX Runtime does: the same float32 logits (to 1e-4 of the logit range)
through the same segmentor in whole and slide mode; bf16 only where the CPU has it; ``--runtime`` and
precisions that do not fit refused in one line."""
import openvino
import pytest
import torch

from mmseg_ext.deploy import DeployError, open_session
from mmseg_ext.deploy import runtime as runtime_module

from utils import batch, export, family_model, load_tool, logits, onnx_segmentor, relative_difference, \
    small_checkpoint

TOLERANCE = 1e-4  # relative to the logit range
CROP, STRIDE = (64, 64), (48, 48)
SLIDE = dict(mode='slide', crop_size=CROP, stride=STRIDE)
NO_BF16 = ['WINOGRAD', 'FP32', 'INT8', 'BIN', 'EXPORT_IMPORT']  # what a CPU without bf16 arithmetic reports


@pytest.fixture(scope='module')
def erfnet(tmp_path_factory):
    """ERFNet (FCN head) and its static 64x64 export."""
    cfg, model = family_model('erfnet-fcn')
    path = export(model, cfg, tmp_path_factory.mktemp('onnx') / 'static.onnx', CROP, dynamic=False)
    return cfg, path


@pytest.mark.parametrize('family', ['erfnet-fcn', 'segformer-b0', 'ocrnet-hr18s'])
def test_openvino_float32_logits_equal_onnxruntime(family, tmp_path):
    cfg, model = family_model(family)
    static = export(model, cfg, tmp_path / 'static.onnx', CROP, dynamic=False)
    image = batch(96, 160, ori_shape=(100, 150))  # 2x3 overlapping windows; resized back to another size
    checks = [('static slide', static, SLIDE, image), ('static whole', static, dict(mode='whole'), batch(*CROP))]
    if family == 'erfnet-fcn':  # a graph of free size, compiled by OpenVINO for each input size
        dynamic = export(model, cfg, tmp_path / 'dynamic.onnx', (64, 96), dynamic=True)
        checks.append(('dynamic whole', dynamic, dict(mode='whole'), image))
    for what, path, test_cfg, data in checks:
        expected = logits(onnx_segmentor(cfg, path, test_cfg), data)
        segmentor = onnx_segmentor(cfg, path, test_cfg, runtime='openvino')
        assert segmentor.session.runtime == 'openvino'
        # set explicitly: OpenVINO's own default on a CPU with AMX is bf16
        assert segmentor.session.compiled.get_property('INFERENCE_PRECISION_HINT') == openvino.Type.f32
        assert relative_difference(logits(segmentor, data), expected) < TOLERANCE, what


def test_openvino_bf16_runs_in_bf16_where_the_cpu_has_it(erfnet):
    cfg, path = erfnet
    data = batch(*CROP)
    expected = logits(onnx_segmentor(cfg, path, dict(mode='whole'), runtime='openvino'), data)
    if 'BF16' not in runtime_module.openvino_capabilities():
        with pytest.raises(DeployError, match='AVX512_BF16 or AMX_BF16'):
            onnx_segmentor(cfg, path, dict(mode='whole'), runtime='openvino', precision='bf16')
        return
    segmentor = onnx_segmentor(cfg, path, dict(mode='whole'), runtime='openvino', precision='bf16')
    assert segmentor.session.compiled.get_property('INFERENCE_PRECISION_HINT') == openvino.Type.bf16
    difference = relative_difference(logits(segmentor, data), expected)
    assert 1e-6 < difference < 0.05  # rounded to bf16 (8 bits of mantissa), yet the same prediction


def test_bf16_is_refused_without_bf16_arithmetic(erfnet, monkeypatch):
    """On a CPU without bf16 OpenVINO would run float32 silently; the session refuses, naming the
    instruction sets, before compiling. The benchmark's variant refuses before it exports."""
    _, path = erfnet
    monkeypatch.setattr(runtime_module, 'openvino_capabilities', lambda: list(NO_BF16))
    with pytest.raises(DeployError, match=r'OpenVINO bf16 needs a CPU with the AVX512_BF16 or AMX_BF16 '
                       r'instruction set, which this CPU lacks \(OpenVINO CPU capabilities: WINOGRAD, FP32'):
        open_session(str(path), 'openvino', precision='bf16')
    from mmseg_ext.benchmark import VariantContext, build_variant
    context = VariantContext(plugin=None, model_cfg={}, device=torch.device('cpu'), cfg=object(), input_shape=CROP)
    with pytest.raises(DeployError, match='AVX512_BF16 or AMX_BF16'):
        build_variant('openvino-bf16', context)


def test_runtime_and_precision_names_are_checked(erfnet):
    _, path = erfnet
    with pytest.raises(DeployError, match="unknown runtime 'tensorrt': choose one of onnxruntime, openvino"):
        open_session(str(path), 'tensorrt')
    with pytest.raises(DeployError, match="ONNX Runtime's CPU provider has no bf16 kernels"):
        open_session(str(path), 'onnxruntime', precision='bf16')
    with pytest.raises(DeployError, match="unknown precision 'fp16'"):
        open_session(str(path), 'openvino', precision='fp16')


def test_openvino_refuses_missing_corrupt_and_ill_fitting_input_in_one_line(erfnet, tmp_path):
    _, path = erfnet
    with pytest.raises(DeployError, match='ONNX file not found'):
        open_session(str(tmp_path / 'missing.onnx'), 'openvino')
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DeployError, match=f'cannot load ONNX file {corrupt}') as error:
        open_session(str(corrupt), 'openvino')
    assert '\n' not in str(error.value)
    session = open_session(str(path), 'openvino', threads=1)
    with pytest.raises(DeployError, match='an input of 64x96 does not fit the static graph of 64x64'):
        session(torch.zeros(1, 3, 64, 96))
    assert tuple(session(torch.zeros(2, 3, *CROP)).shape) == (2, 19, *CROP)  # a batch-1 graph, image by image


@pytest.mark.parametrize('tool', ['test', pytest.param('deployment/infer', id='infer')])
def test_tools_refuse_runtime_with_a_checkpoint_before_any_work(tool, tmp_path, capsys):
    checkpoint = small_checkpoint(tmp_path / 'model.pth')
    config = tmp_path / 'missing_config.py'  # never read: the refusal comes before the model is built
    argv = [str(config), str(checkpoint), '--runtime', 'openvino']
    if tool == 'deployment/infer':
        (tmp_path / 'image.png').write_bytes(b'')  # never read either
        argv += [str(tmp_path / 'image.png'), '--out-dir', str(tmp_path / 'out')]
    assert load_tool(tool).main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f'error: --runtime openvino runs an exported .onnx file, not the checkpoint {checkpoint}: '
                     'export it with tools/deployment/export_onnx.py, or drop --runtime')
    with pytest.raises(SystemExit) as exit_code:
        load_tool(tool).main(argv[:2] + ['--runtime', 'tensorrt'] + argv[4:])
    assert exit_code.value.code == 2
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err


@pytest.mark.parametrize('runtime', ['onnxruntime', 'openvino'])
def test_the_file_is_opened_once_between_the_check_and_the_runner(erfnet, runtime, monkeypatch):
    """onnx_model_config opens the file to refuse it early; the segmentor built from its config takes that
    session (for OpenVINO one compile, not two), unless the file changed in between."""
    from mmseg_ext.deploy import onnx_model_config
    from mmseg_ext.deploy import segmentor as segmentor_module
    from mmseg_ext.registry import MODELS
    cfg, path = erfnet
    opened = []
    real_open = segmentor_module.open_session
    monkeypatch.setattr(segmentor_module, 'open_session', lambda *args, **kwargs: opened.append(args) or
                        real_open(*args, **kwargs))
    model_cfg = onnx_model_config(cfg.model.copy(), str(path), threads=1, runtime=runtime)
    first = MODELS.build(model_cfg)
    assert len(opened) == 1 and first.session.runtime == runtime
    second = MODELS.build(model_cfg)  # the checked session went to the first segmentor
    assert len(opened) == 2 and second.session is not first.session
    model_cfg = onnx_model_config(cfg.model.copy(), str(path), threads=1, runtime=runtime)
    path.touch()
    MODELS.build(model_cfg)
    assert len(opened) == 4, 'a file written since the check is opened again'
