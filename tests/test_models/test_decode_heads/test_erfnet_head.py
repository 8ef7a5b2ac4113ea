"""ERFNetHead (the paper's classifier), the class-weighted loss and the ERFNet configs."""
import glob
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from mmseg_ext.builder import build_segmentor
from mmseg_ext.models.backbones.erfnet import ERFNet
from mmseg_ext.models.decode_heads.erfnet_head import ERFNetHead
from mmseg_ext.models.losses.class_weighted_ce_loss import ClassWeightedCrossEntropyLoss
from mmseg_ext.registry import MODELS
from utils import REPO

PAPER_ENCODER_CONFIG = osp.join(REPO, 'configs/erfnet/erfnet_paper-encoder_1xb6-150e_cityscapes-512x1024.py')
PAPER_CONFIG = osp.join(REPO, 'configs/erfnet/erfnet_paper_1xb6-150e_cityscapes-512x1024.py')


def _samples(labels: torch.Tensor):
    return [SegDataSample(gt_sem_seg=PixelData(data=label[None])) for label in labels]


def test_registered_in_plugin_scope():
    assert MODELS.get('mmseg_ext.ERFNetHead') is ERFNetHead
    assert MODELS.get('mmseg_ext.ClassWeightedCrossEntropyLoss') is ClassWeightedCrossEntropyLoss


def test_full_head_is_authors_transposed_conv_to_full_resolution():
    head = ERFNetHead(in_channels=16, num_classes=19)
    assert isinstance(head.conv_seg, nn.ConvTranspose2d)
    assert (head.conv_seg.kernel_size, head.conv_seg.stride, head.conv_seg.padding) == ((2, 2), (2, 2), (0, 0))
    assert head.conv_seg.weight.shape == (16, 19, 2, 2)
    assert head.dropout is None
    features = torch.randn(2, 16, 17, 23)
    logits = head([features])
    assert logits.shape == (2, 19, 34, 46)
    expected = F.conv_transpose2d(features, head.conv_seg.weight, head.conv_seg.bias, stride=2)
    torch.testing.assert_close(logits, expected)


def test_encoder_only_head_is_1x1_classifier():
    head = ERFNetHead(in_channels=128, num_classes=19, encoder_only=True)
    assert isinstance(head.conv_seg, nn.Conv2d) and head.conv_seg.kernel_size == (1, 1)
    assert head([torch.randn(1, 128, 8, 16)]).shape == (1, 19, 8, 16)


def test_encoder_only_loss_uses_labels_sampled_down_to_logit_resolution():
    head = ERFNetHead(in_channels=128, num_classes=19, encoder_only=True)
    logits = torch.randn(2, 19, 8, 16)
    labels = torch.randint(0, 19, (2, 64, 128), generator=torch.Generator().manual_seed(0))
    labels[:, :8] = 255
    losses = head.loss_by_feat(logits, _samples(labels))
    centres = labels[:, 4::8, 4::8]  # the centre pixel of each 8x8 cell
    expected = F.cross_entropy(logits, centres, ignore_index=255, reduction='sum') / centres.numel()
    torch.testing.assert_close(losses['loss_ce'], expected)


def test_full_head_loss_is_mmseg_loss():
    head = ERFNetHead(in_channels=16, num_classes=19)
    logits = torch.randn(1, 19, 32, 32)
    labels = torch.randint(0, 19, (1, 32, 32))
    losses = head.loss_by_feat(logits, _samples(labels))
    torch.testing.assert_close(losses['loss_ce'], F.cross_entropy(logits, labels))


def test_head_argument_errors_quote_the_values():
    with pytest.raises(ValueError, match=re.escape('in_channels=16; got channels=64')):
        ERFNetHead(in_channels=16, channels=64, num_classes=19)
    with pytest.raises(ValueError, match="input_transform='resize_concat'"):
        ERFNetHead(in_channels=[16, 16], num_classes=19, in_index=[0, 1], input_transform='resize_concat')


def test_class_weighted_loss_is_weighted_mean_over_non_ignored_pixels():
    weights = torch.rand(19) + 0.5
    loss = ClassWeightedCrossEntropyLoss(class_weight=weights.tolist())
    logits = torch.randn(2, 19, 6, 7)
    labels = torch.randint(0, 19, (2, 6, 7))
    labels[0, :3] = 255
    expected = F.cross_entropy(logits, labels, weight=weights, ignore_index=255)
    torch.testing.assert_close(loss(logits, labels, ignore_index=255), expected)
    all_ignored = torch.full_like(labels, 255)
    assert loss(logits, all_ignored, ignore_index=255) == 0


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_class_weighted_loss_of_low_precision_logits_is_the_float32_loss(dtype):
    """A crop's weight total passes float16's largest value (65504) long before 512x1024 pixels: summed in
    float16 it became inf and the loss 0 (nothing learnt under CUDA autocast)."""
    weights = torch.full((19,), 10.0)
    loss = ClassWeightedCrossEntropyLoss(class_weight=weights.tolist())
    logits = torch.randn(1, 19, 128, 256)  # 32768 pixels x weight 10
    labels = torch.randint(0, 19, (1, 128, 256))
    low = logits.to(dtype)
    actual = loss(low, labels)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, F.cross_entropy(low.float(), labels, weight=weights))
    low.requires_grad_(True)
    loss(low, labels).backward()
    assert low.grad.dtype == dtype and low.grad.abs().sum() > 0


def test_class_weighted_loss_errors():
    with pytest.raises(ValueError, match=re.escape('got [1.0, -1.0]')):
        ClassWeightedCrossEntropyLoss(class_weight=[1.0, -1.0])
    loss = ClassWeightedCrossEntropyLoss(class_weight=[1.0] * 19)
    with pytest.raises(ValueError, match='class_weight has 19 entries but the logits have 20 classes'):
        loss(torch.randn(1, 20, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


@pytest.mark.parametrize('config', sorted(glob.glob(osp.join(REPO, 'configs/erfnet/*.py'))) +
                         [osp.join(REPO, 'configs/_demo_/erfnet.py')])
def test_configs_build_and_take_a_training_step(config):
    model = build_segmentor(config, dict(model=dict(data_preprocessor=dict(size=(48, 64)))))
    assert isinstance(model.backbone, ERFNet)
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    label = torch.randint(0, 19, (1, 48, 64))
    label[:, :4] = 255
    sample = SegDataSample(gt_sem_seg=PixelData(data=label),
                           metainfo=dict(img_shape=(48, 64), ori_shape=(48, 64), pad_shape=(48, 64)))
    data = model.data_preprocessor(dict(inputs=[image, image], data_samples=[sample, sample]), True)
    model.train()
    losses = model.loss(data['inputs'], data['data_samples'])
    assert torch.isfinite(losses['decode.loss_ce'])
    losses['decode.loss_ce'].backward()


def test_paper_recipe():
    encoder, full = Config.fromfile(PAPER_ENCODER_CONFIG), Config.fromfile(PAPER_CONFIG)
    for cfg in (encoder, full):
        assert cfg.optim_wrapper.optimizer == dict(type='Adam', lr=5e-4, betas=(0.9, 0.999), eps=1e-8,
                                                   weight_decay=1e-4)
        [poly] = cfg.param_scheduler
        assert (poly.type, poly.power, poly.eta_min, poly.end, poly.by_epoch) == ('PolyLR', 0.9, 0., 150, True)
        assert cfg.train_cfg.max_epochs == 150 and cfg.train_dataloader.batch_size == 6
        assert cfg.model.data_preprocessor.mean == [0., 0., 0.] and cfg.model.data_preprocessor.std == [255.] * 3
        assert cfg.model.backbone.dropout_ratio == (0.03, 0.3) and cfg.model.backbone.channel_dropout
        assert len(cfg.model.decode_head.loss_decode.class_weight) == 19
    assert encoder.model.backbone.encoder_only and encoder.model.decode_head.encoder_only
    assert not full.model.backbone.encoder_only and not full.model.decode_head.encoder_only
    assert encoder.model.decode_head.loss_decode.class_weight[0] == 2.3653597831726
    assert full.model.decode_head.loss_decode.class_weight[0] == 2.8149201869965
    # stage 2 starts from the checkpoint stage 1 writes last
    stage1_name = osp.splitext(osp.basename(PAPER_ENCODER_CONFIG))[0]
    init = full.model.backbone.init_cfg
    assert init.type == 'Pretrained' and init.prefix == 'backbone.'
    assert init.checkpoint == f'work_dirs/{stage1_name}/epoch_{encoder.train_cfg.max_epochs}.pth'


def test_stage_two_loads_stage_one_encoder(tmp_path):
    stage1 = build_segmentor(PAPER_ENCODER_CONFIG)
    path = str(tmp_path / 'epoch_150.pth')
    torch.save({'meta': {}, 'state_dict': stage1.state_dict()}, path)
    stage2 = build_segmentor(PAPER_CONFIG, dict(model=dict(backbone=dict(init_cfg=dict(checkpoint=path)))),
                             keep_pretrained=True)
    stage2.init_weights()
    trained = stage1.backbone.state_dict()
    loaded = stage2.backbone.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in trained.items())
