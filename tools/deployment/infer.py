"""Segment images, folders or videos with a trained model through mmseg's ``MMSegInferencer``.

For every input image ``NAME.ext`` it writes, into ``--out-dir``:

* ``NAME_labels.png``: the raw predicted train ids (uint8, one channel),
* ``NAME_color.png``: the colour mask in the dataset's palette,
* ``NAME_overlay.png``: the colour mask blended over the image (``--opacity``).

A video ``NAME.mp4`` gives ``NAME_overlay.mp4``, ``NAME_color.mp4`` and ``NAME_labels/000000.png`` ...
Inputs that share a ``NAME`` (``a/0001.png`` and ``b/0001.png``) are named by as many of their parent
folders as tell them apart (``a__0001_labels.png``, ``b__0001_labels.png``), so no output overwrites
another; the same file given twice is segmented once.

A missing input, an unsupported file type or a folder without images stops the run before the model is
built (exit status 2), as does a checkpoint that is not one, is damaged or unsafe, or whose weights do not
fit the config's model (:mod:`mmseg_ext.checkpoint.weights_check`; ``--allow-partial-weights`` runs with the
tensors that fit). An input that exists but cannot be read or decoded does not stop a batch: it gets one
``error:`` line, the others are segmented, the run ends with a list of what failed and exits with status 1.
A video that stops before the frame count its header declares counts as failed; its frames already
segmented stay written. An image that fails the preflight's tail check (:func:`mmseg_ext.preflight.check_image_file`:
truncated, or not what its suffix says) but still decodes gets a ``warning:`` line and is segmented.

Example::

    python tools/deployment/infer.py configs/_demo_/erfnet.py work_dirs/demo_erfnet/iter_1000.pth \\
        data/demo_cityscapes/leftImg8bit/val --out-dir predictions
    python tools/deployment/infer.py CONFIG CHECKPOINT INPUT... --out-dir DIR --precision bf16
    python tools/deployment/infer.py CONFIG MODEL.onnx INPUT... --out-dir DIR --runtime openvino --precision bf16
"""
import argparse
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageFile
from rich.progress import Progress

import mmseg_ext  # noqa: F401  (safe checkpoint loading, plugin registry)
from mmseg.apis import MMSegInferencer
from mmseg_ext.checkpoint.weights_check import (CHECKPOINT_ERRORS, check_weights, checkpoint_state_dict,
                                                log_weights_summary)
from mmseg_ext.deploy import RUNTIMES, DeployError, check_runtime_choice, is_onnx_file, onnx_inferencer
from mmseg_ext.precision import PRECISIONS, PrecisionError, check_precision, enable_bf16_inference
from mmseg_ext.preflight import PreflightError, check_image_file

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.webm')


class InputError(ValueError):
    """An input that does not exist or cannot be decoded."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Segment images, folders or videos')
    parser.add_argument('config', help='model config file (or mmseg::... name)')
    parser.add_argument('checkpoint',
                        help='checkpoint file, or an .onnx file written by tools/deployment/export_onnx.py')
    parser.add_argument('inputs', nargs='+', help='image files, folders of images, or video files')
    parser.add_argument('--runtime', choices=RUNTIMES,
                        help='the runtime of an .onnx file (default: onnxruntime); not for a PyTorch checkpoint')
    parser.add_argument('--precision', choices=PRECISIONS, default='float32',
                        help='numeric precision: for a checkpoint, bf16 folds BN, stores the weights in bfloat16 and '
                        'runs under bf16 autocast; for an .onnx file, bf16 needs --runtime openvino (both need '
                        'AVX512_BF16 or AMX on CPU)')
    parser.add_argument('--out-dir', required=True, help='directory for the outputs')
    parser.add_argument('--device', default='cpu', help="device to run on, e.g. 'cpu' or 'cuda:0'")
    parser.add_argument('--opacity', type=float, default=0.5, help='weight of the colour mask in overlays')
    parser.add_argument('--allow-partial-weights', action='store_true',
                        help='run even if the checkpoint does not fit the model (missing, unexpected or '
                        'other-shaped tensors keep the model\'s initial values)')
    args = parser.parse_args(argv)
    if not 0.0 <= args.opacity <= 1.0:
        parser.error(f'--opacity must be within [0, 1], got {args.opacity}')
    return args


def collect_inputs(paths: List[str]) -> List[Tuple[str, str]]:
    """``(kind, path)`` pairs, kind ``'image'`` or ``'video'``, folders expanded (sorted, recursive), each file once."""
    found = []
    for path in paths:
        if osp.isdir(path):
            images = sorted(osp.join(root, name) for root, _, names in os.walk(path) for name in names
                            if name.lower().endswith(IMAGE_SUFFIXES))
            if not images:
                raise InputError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in folder {path}')
            found += [('image', image) for image in images]
        elif not osp.isfile(path):
            raise InputError(f'input not found: {path}')
        elif path.lower().endswith(IMAGE_SUFFIXES):
            found.append(('image', path))
        elif path.lower().endswith(VIDEO_SUFFIXES):
            found.append(('video', path))
        else:
            raise InputError(f'unsupported input type: {path} (images: {", ".join(IMAGE_SUFFIXES)}; '
                             f'videos: {", ".join(VIDEO_SUFFIXES)})')
    first = {}  # a file named twice (directly, through a folder or a link) is segmented once
    for index, (_, path) in enumerate(found):
        first.setdefault(osp.realpath(path), index)
    return [pair for index, pair in enumerate(found) if first[osp.realpath(pair[1])] == index]


def output_names(paths: List[str]) -> Dict[str, str]:
    """Each input path -> the ``NAME`` its outputs start with: the file's stem, or, for inputs whose stems
    collide, the fewest trailing path parts (joined by ``__``) that tell them apart; files that differ only
    in their suffix (``clip.png``, ``clip.jpg``) keep it."""
    bases = [osp.splitext(osp.abspath(path))[0] for path in paths]
    parts = {}
    for path, base in zip(paths, bases):
        parts[path] = base.strip(os.sep).split(os.sep)
        if bases.count(base) > 1:
            parts[path][-1] = osp.basename(path)
    depth = {path: 1 for path in paths}

    def name(path: str) -> str:
        return '__'.join(parts[path][-depth[path]:])

    while True:
        by_name: Dict[str, List[str]] = {}
        for path in paths:
            by_name.setdefault(name(path), []).append(path)
        colliding = [group for group in by_name.values() if len(group) > 1]
        deepen = [path for group in colliding for path in group if depth[path] < len(parts[path])]
        if not deepen:
            break
        for path in deepen:
            depth[path] += 1
    names = {path: name(path) for path in paths}
    for group in colliding:  # whole paths that join alike ('a__b/c', 'a/b__c'): numbered
        names.update({path: f'{names[path]}_{index}' for index, path in enumerate(group, 1)})
    return names


def read_image(path: str) -> Tuple[np.ndarray, Optional[str]]:
    """The BGR image and, if the file fails the preflight's tail check but decodes, what the check found.

    Raises :class:`InputError` naming the file when it cannot be read or decoded.
    """
    try:
        check_image_file(path)
        damage = None
    except PreflightError as error:
        damage = str(error)
    except OSError as error:
        raise InputError(f'cannot read image: {path} ({error.strerror or error})') from None
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None and damage is not None:
        image = decode_cut_short(path)
    if image is None:
        raise InputError(damage or f'cannot decode image: {path}')
    return image, damage


def decode_cut_short(path: str) -> Optional[np.ndarray]:
    """The rows a damaged file still holds, as BGR (the rest black), or None if Pillow cannot decode it either.

    OpenCV returns the decodable part of a JPEG cut short (libjpeg fills the rest) but nothing for a PNG
    (libpng stops with a read error); Pillow can be told to keep the rows it decoded.
    """
    load_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert('RGB'))
    except (OSError, SyntaxError, ValueError):  # what Pillow raises for data it cannot decode
        return None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated
    return np.ascontiguousarray(rgb[:, :, ::-1])


class CheckedInferencer(MMSegInferencer):
    """``MMSegInferencer`` that refuses weights which do not fit the config's model before loading them."""

    def __init__(self, config: str, checkpoint: str, device: str, allow_partial: bool):
        self.checkpoint_path = checkpoint
        self.allow_partial = allow_partial
        super().__init__(model=config, weights=checkpoint, device=device)

    def _load_weights_to_model(self, model, checkpoint: Optional[dict], cfg) -> None:
        if checkpoint is not None:
            log_weights_summary(check_weights(model, checkpoint, self.checkpoint_path, self.allow_partial))
            # mmseg loads the entries it knows (meta, classes); the weights as the check unwrapped them
            checkpoint = {**checkpoint, 'state_dict': checkpoint_state_dict(checkpoint)}
        super()._load_weights_to_model(model, checkpoint, cfg)


class Segmenter:
    """The three outputs of one BGR image, each as ``MMSegInferencer`` makes it: the label map of its
    ``postprocess``, and the colour mask (opacity 1) and overlay of its ``visualize`` (without class names).

    This tool only names and writes them: the inferencer's own ``out_dir`` numbers its files
    (``pred/00000000_pred.png``, ``vis/00000000_vis.jpg``) where the tool's users rely on ``NAME_labels.png``,
    ``NAME_color.png`` and ``NAME_overlay.png``, and it has no video output.
    """

    def __init__(self, inferencer: MMSegInferencer, opacity: float):
        self.inferencer = inferencer
        self.opacity = opacity

    def _paint(self, rgb: np.ndarray, prediction, opacity: float) -> np.ndarray:
        """The inferencer's visualisation as BGR (its visualiser draws on the array as RGB)."""
        (painted, ) = self.inferencer.visualize([rgb], [prediction], return_vis=True, opacity=opacity,
                                                with_labels=False)
        return np.ascontiguousarray(painted[:, :, ::-1])

    def __call__(self, bgr: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(labels, colour BGR, overlay BGR)`` for one BGR image."""
        prediction = self.inferencer(bgr, return_datasamples=True)
        labels = self.inferencer.postprocess([prediction], None)['predictions'].astype(np.uint8)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        return labels, self._paint(rgb, prediction, 1.0), self._paint(rgb, prediction, self.opacity)


def write_png(path: str, array: np.ndarray) -> None:
    if not cv2.imwrite(path, array):
        raise OSError(f'could not write {path}')


def process_video(segment: Segmenter, path: str, stem: str, out_dir: str,
                  progress: Progress) -> Tuple[int, Optional[str]]:
    """Segment every frame of the video at ``path``: the number of frames written, and why reading failed
    (None if it did not). A video that stops before its declared frame count keeps the frames written."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        return 0, f'cannot open video: {path}'
    label_dir = osp.join(out_dir, f'{stem}_labels')
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # 0 when the container does not say
    task = progress.add_task(f'{stem} (video)', total=declared or None)
    writers = {}
    count = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            labels, color, overlay = segment(frame)
            if not writers:
                os.makedirs(label_dir, exist_ok=True)
                size = (frame.shape[1], frame.shape[0])
                fourcc = cv2.VideoWriter_fourcc(*'mp4v')
                writers = {name: cv2.VideoWriter(osp.join(out_dir, f'{stem}_{name}.mp4'), fourcc, fps, size)
                           for name in ('overlay', 'color')}
            writers['overlay'].write(overlay)
            writers['color'].write(color)
            write_png(osp.join(label_dir, f'{count:06d}.png'), labels)
            count += 1
            progress.advance(task)
    finally:
        capture.release()
        for writer in writers.values():
            writer.release()
    if count == 0:
        return 0, f'no frames could be read from video: {path}'
    if count < declared:
        return count, (f'video {path} stopped after {count} of the {declared} frames its header declares '
                       f'(damaged or cut short); those {count} were segmented')
    return count, None


def report(kind: str, message: str) -> None:
    """One ``error:`` or ``warning:`` line for an input, printed when it happens."""
    print(f'{kind}: {message}', file=sys.stderr, flush=True)


def print_summary(total: int, failed: List[str], warned: List[str]) -> None:
    """What failed (and what was segmented with a warning), repeated after the run's other output."""
    if warned:
        print(f'[infer] {len(warned)} input(s) segmented with a warning:', file=sys.stderr)
        for message in warned:
            print(f'  {message}', file=sys.stderr)
    if failed:
        print(f'[infer] {len(failed)} of {total} inputs failed (the others were segmented):', file=sys.stderr)
        for message in failed:
            print(f'  {message}', file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        inputs = collect_inputs(args.inputs)
    except InputError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    if not osp.isfile(args.checkpoint):
        print(f'error: checkpoint not found: {args.checkpoint}', file=sys.stderr)
        return 2
    try:
        check_runtime_choice(args.checkpoint, args.runtime)
        if not is_onnx_file(args.checkpoint):  # a runtime checks its own precision when it opens the file
            check_precision(args.precision, args.device)
        inferencer = (onnx_inferencer(args.config, args.checkpoint, args.device, args.runtime or 'onnxruntime',
                                      args.precision)
                      if is_onnx_file(args.checkpoint)
                      else CheckedInferencer(args.config, args.checkpoint, args.device, args.allow_partial_weights))
    except (DeployError, PrecisionError, *CHECKPOINT_ERRORS) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    if args.precision == 'bf16' and not is_onnx_file(args.checkpoint):
        enable_bf16_inference(inferencer.model, torch.device(args.device).type)
    os.makedirs(args.out_dir, exist_ok=True)
    names = output_names([path for _, path in inputs])
    renamed = sorted(name for path, name in names.items() if name != osp.splitext(osp.basename(path))[0])
    if renamed:
        print(f'[infer] inputs share names; their outputs are named {", ".join(renamed[:6])}'
              f'{" ..." if len(renamed) > 6 else ""}')
    segment = Segmenter(inferencer, args.opacity)
    images = [path for kind, path in inputs if kind == 'image']
    failed: List[str] = []
    warned: List[str] = []
    segmented = frames = 0
    with Progress() as progress:
        task = progress.add_task('images', total=len(images))
        for path in images:
            try:
                image, damage = read_image(path)
            except InputError as error:
                report('error', str(error))
                failed.append(str(error))
                progress.advance(task)
                continue
            if damage is not None:
                report('warning', f'{damage}; segmenting what could be decoded')
                warned.append(damage)
            stem = names[path]
            labels, color, overlay = segment(image)
            write_png(osp.join(args.out_dir, f'{stem}_labels.png'), labels)
            write_png(osp.join(args.out_dir, f'{stem}_color.png'), color)
            write_png(osp.join(args.out_dir, f'{stem}_overlay.png'), overlay)
            segmented += 1
            progress.advance(task)
        for path in (path for kind, path in inputs if kind == 'video'):
            count, problem = process_video(segment, path, names[path], args.out_dir, progress)
            frames += count
            if problem is not None:
                report('error', problem)
                failed.append(problem)
    print(f'[infer] {segmented} images and {frames} video frames segmented; outputs in {args.out_dir}')
    print_summary(len(inputs), failed, warned)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
