"""The bf16 paths: inference close to float32 on every family, autocast training steps, and the refusals."""
import copy
import re
from typing import Optional

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from mmseg_ext import precision
from mmseg_ext.precision import PrecisionError, check_precision, enable_bf16_inference
from utils import (FAMILY_CONFIGS, batch, batch_norms, family_model, load_tool, logits, relative_difference, run_tool,
                   training_batch, write_tiny_config)

needs_bf16 = pytest.mark.skipif(precision.missing_bf16_instructions('cpu') is not None,
                                reason='this CPU has no native bf16')

# bf16 keeps 8 significant bits: each layer's output carries about 0.4% relative rounding, which deep networks
# with random weights compound; the labels (argmax) are what a user sees.
BF16_LOGIT_BOUND = 0.05
BF16_LABEL_AGREEMENT = 0.95


def _output_dtypes(model: torch.nn.Module, layer_type: type) -> set:
    """Registers hooks recording the dtypes ``layer_type`` layers produce; returns the set they fill."""
    dtypes = set()
    for module in model.modules():
        if isinstance(module, layer_type):
            module.register_forward_hook(lambda _, __, output: dtypes.add(output.dtype))
    return dtypes


@needs_bf16
@pytest.mark.parametrize('family', sorted(FAMILY_CONFIGS))
def test_bf16_inference_stays_close_to_float32(family):
    _, model = family_model(family)
    data = batch(64, 128)
    expected = logits(model, data)
    enable_bf16_inference(model)
    conv_dtypes = _output_dtypes(model, torch.nn.Conv2d)
    actual = logits(model, data)
    assert conv_dtypes == {torch.bfloat16}, 'the convolutions must really run in bf16'
    assert actual.dtype == torch.float32
    assert relative_difference(actual, expected) < BF16_LOGIT_BOUND
    agreement = (actual.argmax(0) == expected.argmax(0)).float().mean().item()
    assert agreement > BF16_LABEL_AGREEMENT


@pytest.mark.parametrize('family', sorted(FAMILY_CONFIGS))
def test_float16_autocast_inference_and_gradients_follow_float32(family):
    """float16 is the autocast dtype of ``tools/train.py --amp`` on a GPU (mmengine's AmpOptimWrapper); no GPU
    here, so the same autocast rules run on the CPU: every layer, the SegFormer head's in-place fusion included,
    must accept float16 activations, and the results follow float32's."""
    _, model = family_model(family)
    data = batch(64, 128)
    expected = logits(model, data)
    conv_dtypes = _output_dtypes(model, torch.nn.Conv2d)
    with torch.autocast('cpu', dtype=torch.float16):
        actual = logits(model, data)
    assert conv_dtypes == {torch.float16}
    assert relative_difference(actual.float(), expected) < 0.01
    assert (actual.argmax(0) == expected.argmax(0)).float().mean().item() > 0.99
    model.train()
    for norm in batch_norms(model):
        norm.eval()  # as in the bf16 gradient test below: running statistics, so gradients carry signal
    reference = _gradients(copy.deepcopy(model), autocast=None)
    gradients = _gradients(model, autocast=torch.float16)
    cosine = torch.nn.functional.cosine_similarity(gradients, reference, dim=0).item()
    assert cosine > 0.999, f'float16 gradients point elsewhere than float32 ones (cosine {cosine:.5f})'
    assert abs(gradients.norm() / reference.norm() - 1) < 0.01


@needs_bf16
def test_bf16_inference_covers_slide_mode():
    _, model = family_model('segformer-b0')
    model.test_cfg = Config(dict(mode='slide', crop_size=(64, 64), stride=(48, 48)))
    data = batch(64, 128)
    expected = logits(model, data)
    enable_bf16_inference(model)
    assert relative_difference(logits(model, data), expected) < BF16_LOGIT_BOUND


def _gradients(model: torch.nn.Module, autocast: Optional[torch.dtype]) -> torch.Tensor:
    images, samples = training_batch(64, 128)
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks in both runs
    with torch.autocast('cpu', dtype=autocast or torch.float32, enabled=autocast is not None):
        losses = model.loss(images, samples)
    loss, _ = model.parse_losses(losses)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    return torch.cat([p.grad.double().flatten() for p in model.parameters() if p.grad is not None])


@needs_bf16
@pytest.mark.parametrize('family', sorted(FAMILY_CONFIGS))
def test_autocast_gradients_follow_float32(family):
    """Gradients of a training forward under bf16 autocast against float32's, norms on their running statistics.

    With batch statistics at random initialisation the gradient through each norm is the difference of nearly
    equal terms: float32 already differs from float64 by about 1e-4 in cosine there, and bf16's 8-bit mantissa
    leaves no signal, whichever precision the norm itself runs in. That is a property of the starting point
    (the step test below and the demo's ``--amp`` run cover training with batch statistics).
    """
    _, model = family_model(family)
    model.train()
    for norm in batch_norms(model):
        norm.eval()
    reference = _gradients(copy.deepcopy(model), autocast=None)
    conv_dtypes = _output_dtypes(model, torch.nn.Conv2d)
    gradients = _gradients(model, autocast=torch.bfloat16)
    assert conv_dtypes == {torch.bfloat16}
    cosine = torch.nn.functional.cosine_similarity(gradients, reference, dim=0).item()
    assert cosine > 0.99, f'bf16 gradients point elsewhere than float32 ones (cosine {cosine:.4f})'
    assert abs(gradients.norm() / reference.norm() - 1) < 0.05


@needs_bf16
@pytest.mark.parametrize('family', sorted(FAMILY_CONFIGS))
def test_autocast_training_steps_learn_like_float32(family):
    """``tools/train.py --amp``'s optimizer wrapper on CPU: forward, loss, backward and step in train mode."""
    _, model = family_model(family)
    model.train()
    init_default_scope('mmseg')
    images, samples = training_batch(64, 128)
    losses = {}
    for wrapper_type in ('OptimWrapper', 'mmseg_ext.Bf16AutocastOptimWrapper'):
        trained = copy.deepcopy(model)
        wrapper = build_optim_wrapper(trained, dict(type=wrapper_type, optimizer=dict(type='AdamW', lr=1e-3)))
        torch.manual_seed(1)
        losses[wrapper_type] = []
        for _ in range(4):
            with wrapper.optim_context(trained):
                loss, _ = trained.parse_losses(trained.loss(images, samples))
            wrapper.update_params(loss)
            losses[wrapper_type].append(loss.item())
        assert all(p.dtype == torch.float32 for p in trained.parameters()), 'the master weights stay float32'
    float32, bf16 = losses['OptimWrapper'], losses['mmseg_ext.Bf16AutocastOptimWrapper']
    assert bf16[-1] < bf16[0], f'bf16 steps did not reduce the loss: {bf16}'
    assert abs(bf16[-1] - float32[-1]) < 0.05 * float32[0], (float32, bf16)


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch):
    monkeypatch.setattr(precision, '_cpu_flags', lambda: {'avx512f', 'avx2'})
    with pytest.raises(PrecisionError, match='AVX512_BF16'):
        check_precision('bf16', 'cpu')
    check_precision('float32', 'cpu')
    with pytest.raises(PrecisionError, match="'fp8'"):
        check_precision('fp8', 'cpu')


# ----------------------------------------------------------------------------------------------------------
# The tools: tools/test.py --precision, tools/train.py --amp.


@needs_bf16
def test_test_tool_evaluates_in_bf16_and_folded(trained_run, tmp_path):
    """The tiny config's backbone is mmseg's ERFNet, which mmcv alone cannot fold (bf16 folds too)."""
    config, work_dir, _ = trained_run
    out = {}
    for name, flags in (('float32', []), ('folded', ['--fuse-conv-bn']), ('bf16', ['--precision', 'bf16'])):
        proc = run_tool(['test.py', config, work_dir / 'iter_4.pth', '--work-dir', tmp_path / name] + flags,
                        cwd=tmp_path)
        out[name] = float(re.search(r'\[test\] aAcc: [\d.]+\s+mIoU: ([\d.]+)', proc.stdout).group(1))
    assert abs(out['folded'] - out['float32']) < 0.05, out  # the same maths, rounded differently
    assert abs(out['bf16'] - out['float32']) < 5.0, out


def test_test_tool_refuses_precisions_that_do_not_fit(trained_run, tmp_path):
    config, work_dir, _ = trained_run
    proc = run_tool(['test.py', config, work_dir / 'iter_4.pth', '--precision', 'fp16'], cwd=tmp_path,
                    expect_ok=False)
    assert proc.returncode == 2 and "invalid choice: 'fp16'" in proc.stderr
    onnx_file = tmp_path / 'model.onnx'
    onnx_file.write_bytes(b'not read: the precision is refused first')
    proc = run_tool(['test.py', config, onnx_file, '--precision', 'bf16'], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error')]
    assert errors == ["error: ONNX Runtime's CPU provider has no bf16 kernels: run bf16 with the openvino runtime"]
    proc = run_tool(['test.py', config, onnx_file, '--compile'], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith('error')] == [
        'error: --compile applies to PyTorch checkpoints; an .onnx file is compiled by its runtime']


def _amp_config(optim_wrapper: str) -> Config:
    return Config(dict(optim_wrapper=dict(type=optim_wrapper, optimizer=dict(type='SGD', lr=0.01))))


@needs_bf16
def test_amp_on_cpu_trains_under_bf16_autocast(monkeypatch):
    train = load_tool('train')
    monkeypatch.setattr(train, '_has_amp_accelerator', lambda: False)
    cfg = _amp_config('OptimWrapper')
    train.configure_amp(cfg, amp=True)
    assert cfg.optim_wrapper.type == 'mmseg_ext.Bf16AutocastOptimWrapper'
    assert 'loss_scale' not in cfg.optim_wrapper  # bf16 needs no loss scaling

    monkeypatch.setattr(train, '_has_amp_accelerator', lambda: True)
    cfg = _amp_config('OptimWrapper')
    train.configure_amp(cfg, amp=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 'dynamic'


def test_amp_refusals_are_one_line_before_any_work(monkeypatch):
    train = load_tool('train')
    monkeypatch.setattr(train, '_has_amp_accelerator', lambda: False)
    with pytest.raises(train.PreflightError, match='AmpOptimWrapper .*no GPU'):
        train.configure_amp(_amp_config('AmpOptimWrapper'), amp=False)
    with pytest.raises(train.PreflightError, match='needs optim_wrapper.type OptimWrapper'):
        train.configure_amp(_amp_config('ApexOptimWrapper'), amp=True)
    monkeypatch.setattr(precision, '_cpu_flags', lambda: {'avx512f'})
    with pytest.raises(train.PreflightError, match='--amp on CPU .*AVX512_BF16'):
        train.configure_amp(_amp_config('OptimWrapper'), amp=True)


@needs_bf16
def test_train_tool_amp_runs_on_cpu(tiny_data, tmp_path):
    config = write_tiny_config(tmp_path / 'tiny.py', tiny_data, max_iters=2)
    proc = run_tool(['train.py', config, '--work-dir', tmp_path / 'run', '--amp'], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert 'Bf16AutocastOptimWrapper' in (tmp_path / 'run' / 'tiny.py').read_text()
    assert re.search(r'Iter\(train\) \[2/2\].*loss: [\d.]+', log), log[-3000:]
