"""Shared pieces of the deployment tests: small segmentors with non-trivial BN statistics, mmseg-style
test batches, and the plugin's ONNX Runtime segmentor built from an exported file."""
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmseg.structures import SegDataSample

from mmseg_ext.benchmarking import randomize_batch_norms
from mmseg_ext.deploy import onnx_model_config
from mmseg_ext.deploy.export import build_segmentor, export_segmentor
from mmseg_ext.launch import load_run_config
from mmseg_ext.registry import MODELS
from utils import REPO

FAMILY_CONFIGS = {
    'erfnet-fcn': 'configs/erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py',
    'erfnet-paper-head': 'configs/_demo_/erfnet.py',
    'segformer-b0': 'configs/segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py',
    'segformer-b0-official': 'configs/segformer/segformer-official_mit-b0_8xb1-160k_cityscapes-1024x1024.py',
    'ocrnet-hr18s': 'configs/ocrnet/ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py',
    'ocr-mit-b0': 'configs/ocrnet/ocrnet_mit-b0_8xb1-160k_cityscapes-1024x1024.py',
}


def family_model(name: str, seed: int = 0, cfg_options: Optional[dict] = None) -> Tuple[Config, torch.nn.Module]:
    """The family's config and its segmentor with random weights and random BN statistics, eval mode."""
    cfg = load_run_config(str(REPO / FAMILY_CONFIGS[name]), cfg_options=dict(cfg_options or {}))
    torch.manual_seed(seed)
    model = build_segmentor(cfg)
    randomize_batch_norms(model, seed)
    return cfg, model.eval()


def export(model: torch.nn.Module, cfg: Config, path: Path, shape: Sequence[int], dynamic: bool,
           **kwargs) -> Path:
    export_segmentor(model, cfg, str(path), tuple(shape), dynamic=dynamic, **kwargs)
    return path


def batch(height: int, width: int, ori_shape: Optional[Tuple[int, int]] = None, seed: int = 0) -> dict:
    """One image as mmseg's test pipeline packs it (uint8 CHW, BGR) with its data sample."""
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    sample = SegDataSample(metainfo=dict(ori_shape=ori_shape or (height, width), img_shape=(height, width)))
    return dict(inputs=[image], data_samples=[sample])


def with_test_cfg(model: torch.nn.Module, test_cfg: dict) -> torch.nn.Module:
    from mmengine.config import ConfigDict
    model.test_cfg = ConfigDict(test_cfg)
    return model


def onnx_segmentor(cfg: Config, onnx_file: Path, test_cfg: Optional[dict] = None) -> torch.nn.Module:
    model_cfg = cfg.model.copy()
    if test_cfg is not None:
        model_cfg.test_cfg = test_cfg
    return MODELS.build(onnx_model_config(model_cfg, str(onnx_file), threads=1))


def logits(model: torch.nn.Module, data: dict) -> torch.Tensor:
    """``seg_logits`` of mmseg's ``test_step`` (preprocessing, inference, postprocessing)."""
    import copy
    with torch.no_grad():
        return model.test_step(copy.deepcopy(data))[0].seg_logits.data


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference relative to the range of the expected logits."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float((actual - expected).abs().max() / (expected.max() - expected.min()))
