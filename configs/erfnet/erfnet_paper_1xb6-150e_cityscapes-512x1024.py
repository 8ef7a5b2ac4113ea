# Reproduces the ERFNet paper's network and training (Romera et al., "ERFNet: Efficient Residual
# Factorized ConvNet for Real-time Semantic Segmentation", T-ITS 2018; the authors' erfnet_pytorch
# train/main.py), stage 2 of 2: the full network (encoder + decoder + the authors' 2x2 stride-2
# transposed-conv classifier giving full-resolution logits), the encoder initialised from stage 1
# (configs/erfnet/erfnet_paper-encoder_1xb6-150e_cityscapes-512x1024.py; train that first). Same data,
# optimiser and schedule as stage 1: 1024x512 RGB images in [0, 1], flip, Adam lr 5e-4 / weight decay
# 1e-4, poly 0.9 per epoch, 150 epochs of batch 6, with the authors' decoder-stage class weights.
# Target: 72.1 mIoU on Cityscapes val (69.8 on test), the figures the authors' PyTorch release
# reports; their released erfnet_pretrained.pth scores 72.20 in their eval_iou.py at 1024x512.
# Also the config for the authors' full-network checkpoints converted by tools/model_converters/convert_checkpoint.py:
#   python tools/model_converters/convert_checkpoint.py erfnet_pretrained.pth checkpoints/erfnet_authors.pth
#   python tools/test.py configs/erfnet/erfnet_paper_1xb6-150e_cityscapes-512x1024.py \
#       checkpoints/erfnet_authors.pth
_base_ = ['./erfnet_paper-encoder_1xb6-150e_cityscapes-512x1024.py', '../_base_/erfnet_class_weights.py']

encoder_checkpoint = 'work_dirs/erfnet_paper-encoder_1xb6-150e_cityscapes-512x1024/epoch_150.pth'
model = dict(
    backbone=dict(
        encoder_only=False,
        init_cfg=dict(type='Pretrained', checkpoint=encoder_checkpoint, prefix='backbone.')),
    decode_head=dict(
        in_channels=16,
        encoder_only=False,
        loss_decode=dict(class_weight=_base_.erfnet_decoder_class_weight)))  # the decoder-stage weights
