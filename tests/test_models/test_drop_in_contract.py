"""The drop-in contract, for every type in the plugin's registry that mmseg has under the same name.

For each such pair: the same constructor defaults and positional order, the same state-dict keys and
shapes, strict loading both ways, the same batch-norm statistics measured in training mode, the same
eval-mode outputs with those measured statistics, and the same training-mode gradients. A model the
plugin registers is covered once :data:`SMALL_KWARGS` has an entry for it (a test fails until it has).
"""
import copy
import inspect
from typing import Dict, List, Sequence, Tuple, Type

import mmseg.models  # noqa: F401  (registers mmseg's models)
import pytest
import torch
from mmseg.models.decode_heads.cascade_decode_head import BaseCascadeDecodeHead
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS as MMSEG_MODELS
from torch import Tensor, nn

from mmseg_ext.registry import MODELS as PLUGIN_MODELS
from utils import HRNET_TINY_EXTRA as HRNET_EXTRA
from utils import randomize_

_HEAD_BN = dict(norm_cfg=dict(type='BN'), dropout_ratio=0.)

#: Small constructor arguments per registered type name, valid for both mmseg's and the plugin's class
#: (heads with batch norms; no dropout, so that training-mode passes are deterministic).
SMALL_KWARGS: Dict[str, dict] = {
    'ERFNet': dict(enc_downsample_channels=(4, 8, 16), enc_stage_non_bottlenecks=(1, 2),
                   enc_non_bottleneck_dilations=(2, 4), enc_non_bottleneck_channels=(8, 16),
                   dec_upsample_channels=(8, 4), dec_stages_non_bottleneck=(1, 1),
                   dec_non_bottleneck_channels=(8, 4), dropout_ratio=0.),
    'HRNet': dict(extra=HRNET_EXTRA),
    'MixVisionTransformer': dict(embed_dims=8, num_layers=[1, 2, 1, 1], num_heads=[1, 2, 2, 4]),
    'OCRHead': dict(in_channels=8, channels=6, ocr_channels=4, num_classes=3, **_HEAD_BN),
    'SegformerHead': dict(in_channels=[4, 8, 12, 16], in_index=[0, 1, 2, 3], channels=8, num_classes=3,
                          **_HEAD_BN),
}
IMAGE_SIZE = (64, 96)  # divisible by every backbone's output stride (32)
BATCH = 2
TOLERANCE = 1e-4  # float32, relative to the largest magnitude of the reference tensor (at least 1)
# Gradients through training-mode batch norms of random weights amplify float32 rounding far past TOLERANCE,
# so they are compared in float64, where only a difference in the maths shows.
GRADIENT_TOLERANCE = 1e-9


def mmseg_counterparts() -> Dict[str, Tuple[Type[nn.Module], Type[nn.Module]]]:
    """``name -> (plugin class, mmseg class)`` for every plugin type whose name mmseg also builds."""
    PLUGIN_MODELS.import_from_location()
    pairs = {}
    for name, plugin_class in sorted(PLUGIN_MODELS.module_dict.items()):
        mmseg_class = MMSEG_MODELS.get(name)
        if mmseg_class is not None:
            assert mmseg_class is not plugin_class
            pairs[name] = (plugin_class, mmseg_class)
    return pairs


COUNTERPARTS = mmseg_counterparts()


def small_kwargs(name: str) -> dict:
    if name not in SMALL_KWARGS:
        pytest.fail(f'{name} is registered in the plugin and has an mmseg counterpart: add its small '
                    f'constructor arguments to SMALL_KWARGS in {__file__}')
    return copy.deepcopy(SMALL_KWARGS[name])


def _init_parameters(name: str) -> List[inspect.Parameter]:
    return list(inspect.signature(COUNTERPARTS[name][1].__init__).parameters.values())[1:]


def effective_positional_names(plugin_class: type, mmseg_class: type) -> List[str]:
    """Names the plugin's constructor binds positionally, following ``*args`` into mmseg's parent class."""
    mmseg_names = [p.name for p in inspect.signature(mmseg_class.__init__).parameters.values()
                   if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD][1:]
    names = []
    for parameter in list(inspect.signature(plugin_class.__init__).parameters.values())[1:]:
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            names.append(parameter.name)
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL and issubclass(plugin_class, mmseg_class):
            names += [name for name in mmseg_names if name not in names]
            break
        else:
            break
    return names


def describe(build) -> tuple:
    """What a constructor call builds: its repr, every submodule's plain attributes and the state-dict
    shapes; or the error it raises."""
    try:
        model = build()
    except Exception as error:  # noqa: BLE001  (the same failure counts as the same outcome)
        return ('raises', type(error).__name__, str(error))
    plain = (bool, int, float, str, type(None), tuple, list, dict)
    attributes = [(module_name, key, repr(value)) for module_name, module in model.named_modules()
                  for key, value in sorted(vars(module).items())
                  if not key.startswith('_') and isinstance(value, plain)]
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    return repr(model), attributes, shapes


def _same_default(ours, theirs) -> bool:
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
        return list(ours) == list(theirs)
    return type(ours) is type(theirs) and ours == theirs


def make_inputs(model: nn.Module, kwargs: dict, seed: int, dtype: torch.dtype = torch.float32) -> Tuple:
    """Positional forward arguments for ``model``: images for a backbone; for a decode head, feature maps
    at strides 4, 8, 16, ... with the channels it selects (and soft regions for a cascade head)."""
    generator = torch.Generator().manual_seed(seed)
    if not isinstance(model, BaseDecodeHead):
        return (torch.randn(BATCH, kwargs.get('in_channels', 3), *IMAGE_SIZE, generator=generator, dtype=dtype), )
    in_index = model.in_index if isinstance(model.in_index, (list, tuple)) else [model.in_index]
    in_channels = model.in_channels if isinstance(model.in_channels, (list, tuple)) else [model.in_channels]
    num_inputs = max(index + 1 if index >= 0 else -index for index in in_index)
    channels = [1] * num_inputs
    for index, count in zip(in_index, in_channels):
        channels[index] = count
    height, width = IMAGE_SIZE[0] // 4, IMAGE_SIZE[1] // 4
    features = [torch.randn(BATCH, count, height >> level, width >> level, generator=generator, dtype=dtype)
                for level, count in enumerate(channels)]
    if not isinstance(model, BaseCascadeDecodeHead):
        return (features, )
    selected = features[in_index[0]]
    regions = torch.randn(BATCH, model.num_classes, *selected.shape[2:], generator=generator, dtype=dtype)
    return features, regions


def outputs_of(result) -> List[Tensor]:
    return [result] if isinstance(result, Tensor) else [tensor for tensor in result]


def assert_close(ours: Tensor, reference: Tensor, what: str, tolerance: float = TOLERANCE) -> None:
    assert ours.shape == reference.shape, f'{what}: shape {tuple(ours.shape)} vs {tuple(reference.shape)}'
    scale = max(1.0, float(reference.abs().max()))
    difference = float((ours - reference).abs().max())
    assert difference <= tolerance * scale, f'{what}: max difference {difference:.3g} (scale {scale:.3g})'


def build_pair(name: str) -> Tuple[nn.Module, nn.Module]:
    """mmseg's model with random, non-trivial weights and the plugin's model holding them."""
    plugin_class, mmseg_class = COUNTERPARTS[name]
    torch.manual_seed(0)
    reference = randomize_(mmseg_class(**small_kwargs(name)))
    plugin = plugin_class(**small_kwargs(name))
    plugin.load_state_dict(reference.state_dict(), strict=True)
    return reference, plugin


def batch_norms(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def measure_batch_norm_statistics(model: nn.Module, batches: Sequence[Tuple]) -> None:
    """Replace the running statistics by their cumulative average over training-mode passes of ``batches``."""
    norms = batch_norms(model)
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: the plain mean over the passes
    model.train()
    for inputs in batches:
        model(*inputs)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


NAMES = sorted(COUNTERPARTS)


def test_registry_has_counterparts_and_every_one_has_small_arguments():
    assert {'ERFNet', 'MixVisionTransformer', 'OCRHead', 'SegformerHead'} <= set(NAMES)
    assert sorted(SMALL_KWARGS) == NAMES, 'SMALL_KWARGS must list exactly the types with an mmseg counterpart'


@pytest.mark.parametrize('name', NAMES)
def test_constructor_defaults_and_positional_order(name):
    plugin_class, mmseg_class = COUNTERPARTS[name]
    theirs = _init_parameters(name)
    ours = dict(list(inspect.signature(plugin_class.__init__).parameters.items())[1:])
    positional = [p.name for p in theirs if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert effective_positional_names(plugin_class, mmseg_class)[:len(positional)] == positional
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ours.values())
    for extra in set(ours) - {p.name for p in theirs}:
        assert ours[extra].kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) or \
            ours[extra].default is not inspect.Parameter.empty, f'plugin-only argument {extra} needs a default'
    kwargs = small_kwargs(name)
    for parameter in theirs:
        if parameter.default is inspect.Parameter.empty or parameter.kind in (
                inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        assert parameter.name in ours or takes_kwargs, f'mmseg argument {parameter.name} is not accepted'
        if parameter.name in ours and _same_default(ours[parameter.name].default, parameter.default):
            continue
        # A default written differently (None resolved later, or inherited through **kwargs) must build
        # exactly what mmseg's default builds.
        base = {key: value for key, value in kwargs.items() if key != parameter.name}
        implicit = describe(lambda: plugin_class(**copy.deepcopy(base)))
        explicit = describe(lambda: plugin_class(**copy.deepcopy(base), **{parameter.name: copy.deepcopy(
            parameter.default)}))
        assert implicit[0] != 'raises', f'{name}({base}) fails: {implicit}'
        assert implicit == explicit, f'the default of {parameter.name} differs from mmseg\'s {parameter.default!r}'


@pytest.mark.parametrize('name', NAMES)
def test_state_dict_keys_shapes_and_strict_load_both_ways(name):
    plugin_class, mmseg_class = COUNTERPARTS[name]
    reference, plugin = mmseg_class(**small_kwargs(name)), plugin_class(**small_kwargs(name))
    theirs, ours = reference.state_dict(), plugin.state_dict()
    assert list(ours) == list(theirs)
    assert {key: tuple(value.shape) for key, value in ours.items()} == \
        {key: tuple(value.shape) for key, value in theirs.items()}
    plugin.load_state_dict(randomize_(copy.deepcopy(reference)).state_dict(), strict=True)
    reference.load_state_dict(randomize_(plugin, seed=1).state_dict(), strict=True)
    for key, value in plugin.state_dict().items():
        assert torch.equal(reference.state_dict()[key], value), key


@pytest.mark.parametrize('name', NAMES)
def test_measured_statistics_and_eval_outputs_match(name):
    reference, plugin = build_pair(name)
    kwargs = small_kwargs(name)
    batches = [make_inputs(reference, kwargs, seed) for seed in range(3)]
    measure_batch_norm_statistics(reference, batches)
    measure_batch_norm_statistics(plugin, batches)
    theirs = reference.state_dict()
    for key, value in plugin.state_dict().items():
        if value.is_floating_point():
            assert_close(value, theirs[key], f'measured {key}')
        else:
            assert torch.equal(value, theirs[key]), key
    reference.eval()
    plugin.eval()
    inputs = make_inputs(reference, kwargs, seed=10)
    with torch.no_grad():
        expected, actual = outputs_of(reference(*inputs)), outputs_of(plugin(*inputs))
    assert len(actual) == len(expected)
    for index, (ours, reference_output) in enumerate(zip(actual, expected)):
        assert_close(ours, reference_output, f'eval output {index}')


@pytest.mark.parametrize('name', NAMES)
def test_training_mode_gradients_match(name):
    reference, plugin = (model.double() for model in build_pair(name))
    kwargs = small_kwargs(name)
    grads = {}
    for label, model in (('mmseg', reference), ('plugin', plugin)):
        model.train()
        inputs = make_inputs(reference, kwargs, seed=20, dtype=torch.float64)
        leaves = [tensor.requires_grad_() for tensor in outputs_of(inputs[0])]
        outputs = outputs_of(model(*inputs))
        generator = torch.Generator().manual_seed(21)
        loss = sum((output * torch.randn(output.shape, generator=generator, dtype=output.dtype)).sum()
                   for output in outputs)
        loss.backward()
        grads[label] = {key: parameter.grad for key, parameter in model.named_parameters()}
        grads[label].update({f'input {index}': leaf.grad for index, leaf in enumerate(leaves)})
    assert grads['plugin'].keys() == grads['mmseg'].keys()
    for key, expected in grads['mmseg'].items():
        actual = grads['plugin'][key]
        assert (actual is None) == (expected is None), f'gradient of {key}: {actual} vs {expected}'
        if expected is not None:
            assert_close(actual, expected, f'gradient of {key}', GRADIENT_TOLERANCE)
