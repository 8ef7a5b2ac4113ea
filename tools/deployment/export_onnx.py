"""Export a segmentor (config + checkpoint) to ONNX with its preprocessing, and check it against PyTorch.

The graph takes raw images (N, 3, H, W), float32, in the channel order mmseg loads them (BGR), and
returns logits at the input size (or labels with ``--output labels``); normalisation, backbone, decode
head and the final resize are inside. Class names, palette, test mode, crop and stride, input layout and
shape are stored in the file's metadata. ``tools/test.py CONFIG FILE.onnx`` and ``tools/deployment/infer.py CONFIG
FILE.onnx INPUT...`` run it through :class:`mmseg_ext.deploy.ONNXRuntimeSegmentor`.

Examples::

    python tools/deployment/export_onnx.py configs/segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py \\
        segformer_b0.pth --out segformer_b0.onnx
    python tools/deployment/export_onnx.py configs/_demo_/erfnet.py work_dirs/demo_erfnet/iter_800.pth \\
        --out erfnet.onnx --dynamic-shape --fuse-conv-bn
    python tools/deployment/export_onnx.py configs/_demo_/erfnet.py work_dirs/demo_erfnet/iter_800.pth \\
        --out erfnet_int8.onnx --quantize int8 --calibration-images 16
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import DictAction

import mmseg_ext
from mmseg_ext.builder import build_segmentor
from mmseg_ext.checkpoint.weights_check import CHECKPOINT_ERRORS, load_weights_strict
from mmseg_ext.deploy import DeployError
from mmseg_ext.deploy.export import (OUTPUTS, DeployableSegmentor, compare_with_pytorch, default_shape,
                                     export_segmentor)
from mmseg_ext.deploy.calibration import check_calibration_data
from mmseg_ext.deploy.quantize import DEFAULT_OP_TYPES, quantize_int8
from mmseg_ext.launch import load_run_config
from mmseg_ext.preflight import PreflightError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a segmentor to ONNX (with its preprocessing)')
    parser.add_argument('config', help='model config (path or mmseg::name)')
    parser.add_argument('checkpoint', help='weights (mmengine checkpoint or state dict); all keys must match')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help="input size (default: the config's slide crop, else its test resize scale)")
    parser.add_argument('--dynamic-shape', action='store_true', help='leave batch, height and width free')
    parser.add_argument('--fuse-conv-bn', action='store_true',
                        help='fold BN into convs before export (for --quantize int8 of the plugin\'s ERFNet: '
                        'its downsampler BN stays float otherwise)')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset version')
    parser.add_argument('--output', choices=OUTPUTS, default='logits',
                        help='logits (N, C, H, W) or labels (N, 1, H, W; the argmax inside the graph)')
    parser.add_argument('--quantize', choices=['int8'], help='also quantise (onnxruntime static QDQ quantisation, '
                        'uint8 activations, per-channel int8 weights), calibrated on --calibration-images of the '
                        'train split (its root: --cfg-options train_dataloader.dataset.data_root=DIR)')
    parser.add_argument('--calibration-images', type=int, default=16, metavar='N',
                        help='train-split images for int8 calibration')
    parser.add_argument('--int8-ops', nargs='+', metavar='OP', default=list(DEFAULT_OP_TYPES),
                        help='ONNX operators to quantise with --quantize int8 (default: %(default)s; products of '
                        'two computed tensors stay float; see docs/deploy.md)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings in the config')
    args = parser.parse_args(argv)
    if args.shape and min(args.shape) < 1:
        parser.error(f'--shape must be positive, got {args.shape[0]} {args.shape[1]}')
    if args.opset < 13:
        parser.error(f'--opset must be at least 13, got {args.opset}')
    if args.calibration_images < 1:
        parser.error(f'--calibration-images must be at least 1, got {args.calibration_images}')
    if not args.out.endswith('.onnx'):
        parser.error(f'--out must name a .onnx file, got {args.out}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_run_config(args.config, cfg_options=args.cfg_options)
        if args.quantize:  # refused before the export, which takes a while
            check_calibration_data(cfg)
        model = build_segmentor(cfg).eval()
        checkpoint_meta = load_weights_strict(model, args.checkpoint)
        if args.fuse_conv_bn:
            mmseg_ext.fuse_conv_bn(model)
        shape = tuple(args.shape or default_shape(cfg))
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        float_path = args.out
        if args.quantize:
            float_path = osp.splitext(args.out)[0] + '_fp32.onnx'
        meta = export_segmentor(model, cfg, float_path, shape, dynamic=args.dynamic_shape, opset=args.opset,
                                output=args.output, fused_conv_bn=args.fuse_conv_bn, checkpoint_meta=checkpoint_meta,
                                config_name=args.config, checkpoint_name=osp.basename(args.checkpoint))
        wrapper = DeployableSegmentor(model, args.output).eval()
        report = compare_with_pytorch(wrapper, float_path, shape)
        kind = 'dynamic' if args.dynamic_shape else 'static'
        print(f'[export] {meta.num_classes} classes, {kind} input {shape[0]}x{shape[1]}, test mode {meta.mode}, '
              f'opset {args.opset}, output {args.output}')
        if args.quantize:
            quantize_int8(float_path, args.out, cfg, args.calibration_images, args.int8_ops)
            print(f'[export] float32 graph: {float_path}')
            float_report, report = report, compare_with_pytorch(wrapper, args.out, shape)
            print(f'[export] float32 graph against PyTorch: {_difference(float_report)}')
    except (DeployError, PreflightError, *CHECKPOINT_ERRORS) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'[export] onnxruntime against PyTorch: {_difference(report)}')
    print(f'[export] {osp.abspath(args.out)}')
    return 0


def _difference(report: dict) -> str:
    if 'mismatch' in report:
        return f'{100 * report["mismatch"]:.4f}% of labels differ'
    return (f'largest logit difference {report["max_abs_diff"]:.3e} (logit range {report["logit_range"]:.3g}, '
            f'relative {report["relative"]:.2e})')


if __name__ == '__main__':
    sys.exit(main())
