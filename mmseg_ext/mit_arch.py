"""The published Mix Transformer (MiT) variants, shared by the backbone (:mod:`mmseg_ext.models.backbones.mit`),
the checkpoint converters and the weights check; it imports neither, so imports run one way."""
import re
from typing import Dict, List, Mapping, Union

from torch import Tensor

__all__ = ['MIT_ARCH_SETTINGS', 'PUBLISHED_PATCH_SIZES', 'PUBLISHED_STRIDES', 'PUBLISHED_SR_RATIOS',
           'PUBLISHED_MLP_RATIOS', 'infer_mit_arch']

#: The published MiT variants (SegFormer paper, Table 6). Every variant uses patch sizes (7, 3, 3, 3),
#: strides (4, 2, 2, 2), reduction ratios (8, 4, 2, 1) and MLP ratio 4, which are the constructor defaults.
MIT_ARCH_SETTINGS: Dict[str, Dict[str, Union[int, List[int]]]] = {
    'b0': dict(embed_dims=32, num_layers=[2, 2, 2, 2], num_heads=[1, 2, 5, 8]),
    'b1': dict(embed_dims=64, num_layers=[2, 2, 2, 2], num_heads=[1, 2, 5, 8]),
    'b2': dict(embed_dims=64, num_layers=[3, 4, 6, 3], num_heads=[1, 2, 5, 8]),
    'b3': dict(embed_dims=64, num_layers=[3, 4, 18, 3], num_heads=[1, 2, 5, 8]),
    'b4': dict(embed_dims=64, num_layers=[3, 8, 27, 3], num_heads=[1, 2, 5, 8]),
    'b5': dict(embed_dims=64, num_layers=[3, 6, 40, 3], num_heads=[1, 2, 5, 8]),
}
PUBLISHED_PATCH_SIZES = [7, 3, 3, 3]
PUBLISHED_STRIDES = [4, 2, 2, 2]
PUBLISHED_SR_RATIOS = [8, 4, 2, 1]
PUBLISHED_MLP_RATIOS = [4, 4, 4, 4]


def infer_mit_arch(encoder: Mapping[str, Tensor]) -> str:
    """The published variant (``'b0'`` ... ``'b5'``) of an encoder state dict in mmseg's layout.

    Raises:
        ValueError: if the widths, depths, kernel sizes, reduction ratios or MLP ratio are not those of a
            published variant (the configs could not rebuild the network).
    """
    stages = sorted({int(match[1]) for key in encoder for match in [re.match(r'layers\.(\d+)\.', key)] if match})
    widths, depths, kernels, reductions, mlp_ratios = [], [], [], [], []
    for stage in stages:
        projection = encoder[f'layers.{stage}.0.projection.weight']
        widths.append(projection.shape[0])
        kernels.append(projection.shape[-1])
        blocks = {int(match[1]) for key in encoder
                  for match in [re.match(rf'layers\.{stage}\.1\.(\d+)\.', key)] if match}
        depths.append(len(blocks))
        sr_weight = encoder.get(f'layers.{stage}.1.0.attn.sr.weight')
        reductions.append(1 if sr_weight is None else sr_weight.shape[-1])
        fc1 = encoder.get(f'layers.{stage}.1.0.ffn.layers.0.weight')
        mlp_ratios.append(None if fc1 is None else fc1.shape[0] // projection.shape[0])
    found = dict(hidden_sizes=widths, depths=depths, patch_sizes=kernels, sr_ratios=reductions,
                 mlp_ratios=mlp_ratios)
    for arch, settings in MIT_ARCH_SETTINGS.items():
        expected = dict(hidden_sizes=[settings['embed_dims'] * heads for heads in settings['num_heads']],
                        depths=list(settings['num_layers']), patch_sizes=PUBLISHED_PATCH_SIZES,
                        sr_ratios=PUBLISHED_SR_RATIOS, mlp_ratios=PUBLISHED_MLP_RATIOS)
        if found == expected:
            return arch
    raise ValueError(f'the encoder is not a published MiT variant (found {found}); the repository configs '
                     f'build MiT-B0..B5 only')
