"""mmseg_ext.MixVisionTransformer: drop-in parity with mmseg's MiT, fused attention, variants, errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from mmseg.models.backbones import MixVisionTransformer as MmsegMiT


from mmseg_ext.mit_arch import MIT_ARCH_SETTINGS
from mmseg_ext.models.backbones.mit import EfficientSelfAttention, MixVisionTransformer, cpu_backward_query_splits
from mmseg_ext.registry import MODELS
from utils import randomize_, run_tool

ARCHS = list(MIT_ARCH_SETTINGS)


def _pair(arch: str, seed: int = 0, **kwargs):
    """mmseg's MiT-``arch`` with random weights and the plugin's loaded from it strictly."""
    torch.manual_seed(seed)
    reference = MmsegMiT(**{**MIT_ARCH_SETTINGS[arch], **kwargs})
    randomize_(reference, seed)
    plugin = MixVisionTransformer(arch=arch, **kwargs)
    plugin.load_state_dict(reference.state_dict(), strict=True)
    return reference, plugin


@pytest.mark.parametrize('arch', ARCHS)
def test_variant_has_mmseg_keys_and_shapes(arch):
    torch.manual_seed(0)
    reference = MmsegMiT(**MIT_ARCH_SETTINGS[arch]).state_dict()
    plugin = MixVisionTransformer(arch=arch).state_dict()
    assert list(plugin) == list(reference)
    assert {key: value.shape for key, value in plugin.items()} == {key: value.shape for key, value in reference.items()}


def test_published_variant_settings():
    """Stage widths and depths of MiT-B0..B5 (SegFormer, Table 6), and mmseg's defaults without arch."""
    widths = {arch: [MixVisionTransformer(arch=arch, num_layers=[1, 1, 1, 1]).layers[i][0].projection.out_channels
                     for i in range(4)] for arch in ('b0', 'b1')}
    assert widths == {'b0': [32, 64, 160, 256], 'b1': [64, 128, 320, 512]}
    depths = {arch: MIT_ARCH_SETTINGS[arch]['num_layers'] for arch in ARCHS}
    assert depths == {'b0': [2, 2, 2, 2], 'b1': [2, 2, 2, 2], 'b2': [3, 4, 6, 3], 'b3': [3, 4, 18, 3],
                      'b4': [3, 8, 27, 3], 'b5': [3, 6, 40, 3]}
    default = MixVisionTransformer()
    assert (default.embed_dims, default.num_layers, default.num_heads) == (64, [3, 4, 6, 3], [1, 2, 4, 8])
    assert list(default.state_dict()) == list(MmsegMiT().state_dict())


def test_explicit_arguments_override_arch():
    model = MixVisionTransformer(arch='b2', num_layers=[1, 1, 2, 1], embed_dims=16)
    assert model.num_layers == [1, 1, 2, 1] and model.embed_dims == 16 and model.num_heads == [1, 2, 5, 8]
    assert [len(stage[1]) for stage in model.layers] == [1, 1, 2, 1]
    assert model.layers[2][0].projection.out_channels == 80


@pytest.mark.parametrize('arch', ['b0', 'b2'])
def test_outputs_match_mmseg_in_eval(arch):
    reference, plugin = _pair(arch)
    reference.eval(), plugin.eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, actual = reference(images), plugin(images)
    assert len(actual) == 4
    for exp, act in zip(expected, actual):
        assert act.shape == exp.shape and act.is_contiguous()
        torch.testing.assert_close(act, exp, rtol=0, atol=1e-4)


def test_train_mode_outputs_and_gradients_match_mmseg():
    reference, plugin = _pair('b0', num_layers=[1, 2, 1, 1])
    images = torch.randn(1, 3, 64, 64)
    losses = []
    for model in (reference, plugin):
        model.train()
        outputs = model(images)
        loss = sum((output**2).mean() for output in outputs)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    reference_grads = dict(reference.named_parameters())
    for name, parameter in plugin.named_parameters():
        torch.testing.assert_close(parameter.grad, reference_grads[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_qkv_bias_false_matches_mmseg():
    reference, plugin = _pair('b0', qkv_bias=False, num_layers=[1, 1, 1, 1])
    keys = set(plugin.state_dict())
    assert not any(key.endswith(('in_proj_bias', 'out_proj.bias')) for key in keys)
    reference.eval(), plugin.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for exp, act in zip(reference(images), plugin(images)):
            torch.testing.assert_close(act, exp, rtol=0, atol=1e-4)


def _explicit_attention(attention, tokens, hw_shape, identity):
    """SegFormer's attention written out as softmax(QK^T / sqrt(d)) V with the module's weights."""
    batch, _, channels = tokens.shape
    num_heads = attention.num_heads
    weight, bias = attention.attn.in_proj_weight, attention.attn.in_proj_bias
    w_q, w_k, w_v = weight.chunk(3)
    b_q, b_k, b_v = bias.chunk(3)
    source = tokens
    if attention.sr_ratio > 1:
        feature_map = tokens.transpose(1, 2).reshape(batch, channels, *hw_shape)
        source = attention.norm(attention.sr(feature_map).flatten(2).transpose(1, 2))

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)

    q, k, v = heads(tokens @ w_q.T + b_q), heads(source @ w_k.T + b_k), heads(source @ w_v.T + b_v)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(channels // num_heads), dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(batch, -1, channels)
    return identity + attended @ attention.attn.out_proj.weight.T + attention.attn.out_proj.bias


@pytest.mark.parametrize('num_heads,sr_ratio', [(1, 1), (2, 1), (1, 2), (5, 4)])
def test_sdpa_attention_equals_explicit_formula(num_heads, sr_ratio):
    torch.manual_seed(0)
    channels, (height, width) = 10 * num_heads, (8, 12)
    attention = EfficientSelfAttention(channels, num_heads, qkv_bias=True, sr_ratio=sr_ratio,
                                       norm_cfg=dict(type='LN', eps=1e-6))
    randomize_(attention)
    attention.eval()
    tokens = torch.randn(2, height * width, channels)
    identity = torch.randn(2, height * width, channels)
    expected = _explicit_attention(attention, tokens, (height, width), identity)
    with torch.no_grad():
        actual = attention(tokens, (height, width), identity=identity)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('batch_heads,num_queries,num_threads,splits', [
    (1, 65536, 2, 2),  # MiT stage 1 at 1024x1024: one head, so the backward would use one thread
    (5, 4096, 2, 2),  # five heads on two threads: ten blocks balance
    (2, 16384, 2, 1),  # already balanced
    (8, 1024, 2, 1),
    (1, 65536, 16, 16),
    (1, 1000, 2, 1),  # halves would fall below the kernel's large 768-query tiles
    (1, 2304, 4, 3),  # 4 blocks would be too small; 3 divides the queries
    (1, 1601, 2, 1),  # odd length: no equal halves
])
def test_cpu_backward_query_splits(batch_heads, num_queries, num_threads, splits):
    assert cpu_backward_query_splits(batch_heads, num_queries, num_threads) == splits


@pytest.mark.parametrize('batch,num_heads,threads', [(2, 1, 4), (1, 5, 2)])
def test_split_queries_give_the_formula_outputs_and_gradients(monkeypatch, batch, num_heads, threads):
    """With queries cut into blocks for the CPU backward, outputs and every gradient match the formula."""
    monkeypatch.setattr(torch, 'get_num_threads', lambda: threads)
    torch.manual_seed(0)
    channels, hw_shape = 8 * num_heads, (48, 64)
    attention = EfficientSelfAttention(channels, num_heads, qkv_bias=True, sr_ratio=8,
                                       norm_cfg=dict(type='LN', eps=1e-6))
    randomize_(attention)
    attention.train()
    tokens = torch.randn(batch, hw_shape[0] * hw_shape[1], channels, requires_grad=True)
    identity = torch.randn(batch, hw_shape[0] * hw_shape[1], channels)
    query_batches = []
    original = F.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        query_batches.append(query.shape[0])
        return original(query, *args, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    actual = attention(tokens, hw_shape, identity=identity)
    splits = cpu_backward_query_splits(batch * num_heads, tokens.shape[1], threads)
    assert splits > 1 and query_batches == [batch * splits]
    upstream = torch.randn_like(actual)
    actual_grads = torch.autograd.grad(actual, [tokens, *attention.parameters()], upstream)
    expected = _explicit_attention(attention, tokens, hw_shape, identity)
    expected_grads = torch.autograd.grad(expected, [tokens, *attention.parameters()], upstream)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    names = ['tokens'] + [name for name, _ in attention.named_parameters()]
    for name, act, exp in zip(names, actual_grads, expected_grads):
        # Tolerance relative to each gradient's scale: the key bias's true gradient is zero (softmax
        # ignores a shift shared by all keys), so both sides hold only rounding noise there.
        atol = 1e-5 * max(1., exp.abs().max().item())
        torch.testing.assert_close(act, exp, rtol=1e-4, atol=atol, msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('arch', ARCHS)
def test_forward_backward_every_parameter_gets_a_gradient(arch):
    torch.manual_seed(0)
    model = MixVisionTransformer(arch=arch)  # drop path would zero whole branches of a batch of one
    model.train()
    outputs = model(torch.randn(1, 3, 32, 32))
    widths = [model.embed_dims * heads for heads in model.num_heads]
    assert [tuple(output.shape) for output in outputs] == [(1, width, 32 // stride, 32 // stride)
                                                          for width, stride in zip(widths, (4, 8, 16, 32))]
    sum(output.float().pow(2).mean() for output in outputs).backward()
    without = [name for name, parameter in model.named_parameters()
               if parameter.grad is None or not parameter.grad.abs().sum() > 0]
    assert not without, f'no gradient for {without[:5]}'


def test_with_cp_gives_the_same_outputs_and_gradients():
    _, plain = _pair('b0', num_layers=[1, 1, 1, 1])
    checkpointed = MixVisionTransformer(arch='b0', num_layers=[1, 1, 1, 1], with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    assert all(block.with_cp for stage in checkpointed.layers for block in stage[1])
    images = torch.randn(1, 3, 64, 64)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        sum(output.pow(2).mean() for output in model(images)).backward()
        grads.append({name: parameter.grad for name, parameter in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)


def test_drop_path_as_mmseg():
    torch.manual_seed(0)
    model = MixVisionTransformer(arch='b0', drop_path_rate=0.3)
    reference = MmsegMiT(**MIT_ARCH_SETTINGS['b0'], drop_path_rate=0.3)
    rates = [(block.attn.dropout_layer.drop_prob, block.ffn.dropout_layer.drop_prob)
             for stage in model.layers for block in stage[1]]
    expected = [(block.attn.dropout_layer.drop_prob, block.ffn.dropout_layer.drop_prob)
                for stage in reference.layers for block in stage[1]]
    assert rates == pytest.approx(expected) and rates[-1][0] == pytest.approx(0.3)
    model.init_weights()
    images = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        first, second = model(images)[-1], model(images)[-1]
    torch.testing.assert_close(first, second)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(images)[-1], model(images)[-1])


def test_out_indices_select_stages():
    model = MixVisionTransformer(arch='b0', out_indices=(1, 3)).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert [output.shape[1] for output in outputs] == [64, 256]


def test_default_initialisation_as_mmseg():
    torch.manual_seed(0)
    model = MixVisionTransformer(arch='b1')
    model.init_weights()
    block = model.layers[0][1][0]
    assert torch.all(block.norm1.weight == 1) and torch.all(block.norm1.bias == 0)
    assert torch.all(block.attn.attn.out_proj.bias == 0)
    assert block.attn.attn.out_proj.weight.std().item() == pytest.approx(0.02, rel=0.15)
    fc1 = block.ffn.layers[0]
    assert fc1.weight.std().item() == pytest.approx(math.sqrt(2.0 / fc1.out_channels), rel=0.1)
    assert torch.all(fc1.bias == 0)
    limit = math.sqrt(6 / (64 + 3 * 64))  # xavier-uniform bound of the [3C, C] in_proj_weight
    assert block.attn.attn.in_proj_weight.abs().max().item() <= limit


def test_registered_in_the_plugin_scope():
    model = MODELS.build(dict(type='mmseg_ext.MixVisionTransformer', arch='b0'))
    assert isinstance(model, MixVisionTransformer)


@pytest.mark.parametrize('kwargs,error,words', [
    (dict(arch='b6'), ValueError, ["'b6'", "'b0'", "'b5'"]),
    (dict(arch='mit_b0'), ValueError, ["'mit_b0'"]),
    (dict(num_layers=[2, 2, 2]), ValueError, ['num_stages=4', 'num_layers']),
    (dict(sr_ratios=[8, 4, 2]), ValueError, ['sr_ratios']),
    (dict(out_indices=(0, 4)), ValueError, ['out_indices=(0, 4)']),
    (dict(num_heads=[1, 2, 5]), ValueError, ['num_heads']),
    (dict(pretrained=3), TypeError, ['int']),
    (dict(pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='b.pth')), ValueError, ['init_cfg']),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, words):
    with pytest.raises(error) as info:
        MixVisionTransformer(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match=r'embed_dims \(10\) must be a multiple of num_heads \(3\)'):
        EfficientSelfAttention(10, 3)


def test_attention_uses_the_fused_kernel(monkeypatch):
    """The attention goes through scaled_dot_product_attention, once per block, in eval and training."""
    calls = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    model = MixVisionTransformer(arch='b0').eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert len(calls) == sum(MIT_ARCH_SETTINGS['b0']['num_layers'])
    assert calls[0] == (1, 1, 256, 32)
    calls.clear()
    model.train()  # training goes through the same kernel (its backward is PyTorch's fused one)
    sum(output.sum() for output in model(torch.randn(1, 3, 64, 64))).backward()
    assert len(calls) == sum(MIT_ARCH_SETTINGS['b0']['num_layers'])
