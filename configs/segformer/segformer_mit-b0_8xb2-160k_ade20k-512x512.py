# SegFormer, MiT-B0 encoder and mmseg's decoder, ADE20K, 512x512 crops, 160k iterations (8 GPUs x 2). Targets
# mmseg's published figure: 37.41 mIoU on ADE20K val (single scale, whole image resized to 2048x512). Same
# recipe as the Cityscapes configs.
_base_ = ['./_base_/segformer_mit-b0_160k.py', 'mmseg::_base_/datasets/ade20k.py']
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=150))
train_dataloader = dict(batch_size=2, num_workers=2)
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = val_dataloader
