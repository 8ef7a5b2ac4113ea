"""Row-blocked Mix-FFN: the same outputs and gradients as the whole-map computation, and block planning."""
import pytest
import torch
from torch import nn

import mmseg_ext.models.backbones.mit as mit
from mmseg_ext.models.backbones.mit import MixFFN
from mmseg_ext.models.backbones.mix_ffn_rows import (GLIBC_MMAP_THRESHOLD_MAX, RowBlockedMixFFN, plan_row_blocks,
                                                     row_blocked_mix_ffn, supports_row_blocking)
from utils import randomize_

MIB = 2**20


@pytest.mark.parametrize('height,bytes_per_row,blocks', [
    (256, 256 * 256 * 4, [(0, 64), (64, 128), (128, 192), (192, 256)]),  # MiT-B2 stage 1 at 1024x1024: 64 MiB
    (128, 128 * 512 * 4, [(0, 64), (64, 128)]),  # stage 2: exactly 32 MiB
    (64, 64 * 1280 * 4, None),  # stage 3: 20 MiB, below the threshold
    (100, MIB, [(0, 15), (15, 30), (30, 45), (45, 60), (60, 75), (75, 90), (90, 100)]),  # balanced, 16 rows max
    (40, 20 * MIB, [(row, row + 1) for row in range(40)]),  # rows over the block budget: one row each
    (1, 64 * MIB, None),  # a single row cannot be cut
])
def test_plan_row_blocks(height, bytes_per_row, blocks):
    assert plan_row_blocks(height, bytes_per_row) == blocks


def _mix_ffn(act_cfg, seed=0):
    torch.manual_seed(seed)
    module = MixFFN(embed_dims=6, feedforward_channels=24, act_cfg=act_cfg)
    return randomize_(module, seed)


@pytest.mark.parametrize('act_cfg', [None, dict(type='GELU', approximate='tanh'), dict(type='ReLU')])
@pytest.mark.parametrize('batch,blocks', [
    (1, [(0, 4), (4, 8), (8, 11)]),
    (2, [(0, 1), (1, 6), (6, 7), (7, 11)]),  # one-row blocks, and a batch whose blocks are strided
])
def test_blocked_outputs_and_gradients_equal_the_whole_map(monkeypatch, act_cfg, batch, blocks):
    module = _mix_ffn(act_cfg).train()
    hw_shape = (11, 9)
    tokens = torch.randn(batch, 99, 6, requires_grad=True)
    upstream = torch.randn(batch, 99, 6)
    parameters = [tokens, *module.parameters()]

    monkeypatch.setattr(MixFFN, 'row_blocks', lambda self, x_map: None)
    expected = module(tokens, hw_shape)
    expected_grads = torch.autograd.grad(expected, parameters, upstream)

    planned = []
    monkeypatch.setattr(MixFFN, 'row_blocks', lambda self, x_map: planned.append(x_map.shape) or blocks)
    actual = module(tokens, hw_shape)
    actual_grads = torch.autograd.grad(actual, parameters, upstream)
    assert planned == [(batch, 6, 11, 9)]

    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    names = ['tokens'] + [name for name, _ in module.named_parameters()]
    for name, act, exp in zip(names, actual_grads, expected_grads):
        torch.testing.assert_close(act, exp, rtol=1e-5, atol=1e-5, msg=lambda m: f'{name}: {m}')


def test_blocked_inference_keeps_nothing_for_backward():
    module = _mix_ffn(None).eval()
    x_map = torch.randn(1, 6, 10, 7).contiguous(memory_format=torch.channels_last)
    fc1, dw_conv, activate, _, fc2 = (module.layers[index] for index in range(5))
    with torch.no_grad():
        blocked = row_blocked_mix_ffn(x_map, fc1, dw_conv, activate, fc2, [(0, 3), (3, 10)])
        whole = fc2(activate(dw_conv(fc1(x_map))))
    assert blocked.grad_fn is None and blocked.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-6)


def test_mix_ffn_plans_blocks_for_large_hidden_maps():
    """At MiT-B2's first stage at 1024x1024 (64 MiB hidden maps) the Mix-FFN computes four blocks of rows."""
    module = MixFFN(embed_dims=64, feedforward_channels=256)
    x_map = torch.empty(1, 64, 256, 256)
    assert module.row_blocks(x_map) == [(0, 64), (64, 128), (128, 192), (192, 256)]
    assert module.row_blocks(torch.empty(1, 64, 128, 128)) is None  # 16 MiB: whole
    assert 1 * 256 * 256 * 256 * 4 >= GLIBC_MMAP_THRESHOLD_MAX


def test_mix_ffn_computes_whole_maps_with_dropout_or_other_activations():
    x_map = torch.empty(1, 64, 256, 256)
    dropout = MixFFN(embed_dims=64, feedforward_channels=256, ffn_drop=0.1)
    assert dropout.train().row_blocks(x_map) is None
    assert dropout.eval().row_blocks(x_map) is not None  # dropout is inactive in eval mode
    other = MixFFN(embed_dims=64, feedforward_channels=256, act_cfg=dict(type='SiLU'))
    assert not supports_row_blocking(other.layers[2]) and other.row_blocks(x_map) is None
    assert supports_row_blocking(nn.GELU()) and supports_row_blocking(nn.ReLU())


def test_encoder_with_blocks_matches_the_whole_map_encoder(monkeypatch):
    """A whole MiT-B0 with every Mix-FFN cut into two-row blocks gives the same features and gradients."""
    torch.manual_seed(0)
    model = randomize_(mit.MixVisionTransformer(arch='b0', num_layers=[1, 1, 1, 1])).train()
    images = torch.randn(1, 3, 64, 96)

    def run():
        model.zero_grad()
        outputs = model(images)
        sum((output**2).mean() for output in outputs).backward()
        return [output.detach() for output in outputs], {name: p.grad.clone() for name, p in model.named_parameters()}

    monkeypatch.setattr(MixFFN, 'row_blocks', lambda self, x_map: None)
    expected_outputs, expected_grads = run()
    monkeypatch.setattr(MixFFN, 'row_blocks',
                        lambda self, x_map: [(row, min(row + 2, x_map.shape[2])) for row in range(0, x_map.shape[2], 2)])
    actual_outputs, actual_grads = run()
    for act, exp in zip(actual_outputs, expected_outputs):
        torch.testing.assert_close(act, exp, rtol=1e-5, atol=1e-5)
    for name, exp in expected_grads.items():
        torch.testing.assert_close(actual_grads[name], exp, rtol=1e-4, atol=1e-5 * max(1., exp.abs().max().item()),
                                   msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('kind', ['gelu', 'relu'])
def test_row_blocked_backward_passes_gradcheck(kind):
    """The written-out backward against finite differences, in double precision, with uneven blocks."""
    torch.manual_seed(0)
    x_map = torch.randn(2, 3, 5, 4, dtype=torch.double).contiguous(memory_format=torch.channels_last)
    weights = [torch.randn(shape, dtype=torch.double) for shape in
               ((6, 3, 1, 1), (6, ), (6, 1, 3, 3), (6, ), (3, 6, 1, 1), (3, ))]
    inputs = [tensor.requires_grad_(True) for tensor in (x_map, *weights)]
    blocks = [(0, 2), (2, 3), (3, 5)]
    assert torch.autograd.gradcheck(lambda *tensors: RowBlockedMixFFN.apply(*tensors, kind, 'none', blocks), inputs,
                                    eps=1e-6, atol=1e-5)


def test_frozen_parameters_get_no_gradient_and_the_others_match(monkeypatch):
    """Weights that do not require gradients get none; the rest match the whole-map computation."""
    module = _mix_ffn(None).train()
    module.layers[1].weight.requires_grad_(False)  # the depth-wise kernel
    module.layers[0].bias.requires_grad_(False)
    tokens = torch.randn(1, 99, 6, requires_grad=True)
    trainable = [tokens] + [p for p in module.parameters() if p.requires_grad]
    monkeypatch.setattr(MixFFN, 'row_blocks', lambda self, x_map: None)
    expected = torch.autograd.grad(module(tokens, (11, 9)).sum(), trainable)
    monkeypatch.setattr(MixFFN, 'row_blocks', lambda self, x_map: [(0, 5), (5, 11)])
    module(tokens, (11, 9)).sum().backward()
    assert module.layers[1].weight.grad is None and module.layers[0].bias.grad is None
    for act, exp in zip([tokens.grad] + [p.grad for p in trainable[1:]], expected):
        torch.testing.assert_close(act, exp, rtol=1e-5, atol=1e-5)
