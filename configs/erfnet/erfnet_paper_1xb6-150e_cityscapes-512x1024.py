# Reproduces the ERFNet paper's network and training (Romera et al., "ERFNet: Efficient Residual
# Factorized ConvNet for Real-time Semantic Segmentation", T-ITS 2018; the authors' erfnet_pytorch
# train/main.py), stage 2 of 2: the full network (encoder + decoder + the authors' 2x2 stride-2
# transposed-conv classifier giving full-resolution logits), the encoder initialised from stage 1
# (configs/erfnet/erfnet_paper-encoder_1xb6-150e_cityscapes-512x1024.py; train that first). Same data,
# optimiser and schedule as stage 1: 1024x512 RGB images in [0, 1], flip, Adam lr 5e-4 / weight decay
# 1e-4, poly 0.9 per epoch, 150 epochs of batch 6, with the authors' decoder-stage class weights.
# Target: 72.1 mIoU on Cityscapes val (69.8 on test), the figures the authors' PyTorch release
# reports; their released erfnet_pretrained.pth scores 72.20 in their eval_iou.py at 1024x512.
# Also the config for the authors' full-network checkpoints converted by tools/convert_checkpoint.py:
#   python tools/convert_checkpoint.py erfnet_pretrained.pth checkpoints/erfnet_authors.pth
#   python tools/test.py configs/erfnet/erfnet_paper_1xb6-150e_cityscapes-512x1024.py \
#       checkpoints/erfnet_authors.pth
_base_ = ['./erfnet_paper-encoder_1xb6-150e_cityscapes-512x1024.py']

# The authors' decoder-stage weights for train ids 0-18 (the ignored label is mmseg's 255).
class_weight = [
    2.8149201869965, 6.9850029945374, 3.7890393733978, 9.9428062438965, 9.7702074050903,
    9.5110931396484, 10.311357498169, 10.026463508606, 4.6323022842407, 9.5608062744141,
    7.8698215484619, 9.5168733596802, 10.373730659485, 6.6616044044495, 10.260489463806,
    10.287888526917, 10.289801597595, 10.405355453491, 10.138095855713
]
encoder_checkpoint = 'work_dirs/erfnet_paper-encoder_1xb6-150e_cityscapes-512x1024/epoch_150.pth'
model = dict(
    backbone=dict(
        encoder_only=False,
        init_cfg=dict(type='Pretrained', checkpoint=encoder_checkpoint, prefix='backbone.')),
    decode_head=dict(
        in_channels=16,
        encoder_only=False,
        loss_decode=dict(class_weight=class_weight)))
