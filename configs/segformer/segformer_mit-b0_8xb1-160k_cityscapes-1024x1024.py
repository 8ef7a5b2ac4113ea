# SegFormer, MiT-B0 encoder and mmseg's decoder, Cityscapes, 1024x1024 crops, 160k iterations (8 GPUs x 1).
# Targets mmseg's published figure: 76.54 mIoU on Cityscapes val (single scale, sliding window 1024, stride
# 768). mmseg's recipe: AdamW lr 6e-5, no decay on norms, decoder lr x10, 1500-iteration warm-up then poly;
# ImageNet MiT-B0 weights (mmseg's converted mit_b0.pth; NVlabs' original file loads too).
_base_ = ['./_base_/segformer_mit-b0_160k.py', 'mmseg::_base_/datasets/cityscapes_1024x1024.py']
crop_size = (1024, 1024)
model = dict(
    data_preprocessor=dict(size=crop_size),
    test_cfg=dict(mode='slide', crop_size=(1024, 1024), stride=(768, 768)))
train_dataloader = dict(batch_size=1, num_workers=4)
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = val_dataloader
