"""Procedurally drawn street scenes in the Cityscapes layout: the demo dataset and calibration images.

The layout is the one mmseg's ``CityscapesDataset`` reads unchanged::

    ROOT/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png
    ROOT/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   (for the official evaluator)

Labels use the 19 Cityscapes train ids (road 0, sidewalk 1, building 2, pole 5, traffic sign 7,
vegetation 8, sky 10, person 11, car 13 are drawn) and 255 for the ignored ego-vehicle hood. Every
scene is drawn from ``seed`` and its index alone, so the same arguments give byte-identical files.
The command line is ``tools/dataset_converters/make_demo_data.py``; int8 calibration
(:mod:`mmseg_ext.deploy.calibration`) calls :func:`write_demo_dataset` when a config's own images are absent.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np

ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_SIGN, VEGETATION, SKY, PERSON, CAR = 0, 1, 2, 5, 7, 8, 10, 11, 13
IGNORE = 255
DRAWN_TRAIN_IDS = (ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_SIGN, VEGETATION, SKY, PERSON, CAR)
# Cityscapes train id -> label id (cityscapesscripts' labels table); 255 -> 0 ('unlabeled').
TRAIN_ID_TO_LABEL_ID = np.zeros(256, np.uint8)
TRAIN_ID_TO_LABEL_ID[:19] = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITIES = {'train': ('aachen', 'bochum', 'cologne'), 'val': ('frankfurt', 'lindau')}

Color = Tuple[int, int, int]


@dataclass
class Canvas:
    """A BGR image and its train-id label, drawn together so they stay pixel-aligned."""
    image: np.ndarray
    label: np.ndarray

    def fill_polygon(self, points: np.ndarray, color: Color, train_id: int) -> None:
        pts = [np.round(points).astype(np.int32)]
        cv2.fillPoly(self.image, pts, color, lineType=cv2.LINE_8)
        cv2.fillPoly(self.label, pts, train_id, lineType=cv2.LINE_8)

    def fill_rect(self, x0: float, y0: float, x1: float, y1: float, color: Color, train_id: int) -> None:
        self.fill_polygon(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), color, train_id)

    def fill_ellipse(self, center: Tuple[float, float], axes: Tuple[float, float], color: Color,
                     train_id: int) -> None:
        c = (int(round(center[0])), int(round(center[1])))
        a = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
        cv2.ellipse(self.image, c, a, 0, 0, 360, color, -1, lineType=cv2.LINE_8)
        cv2.ellipse(self.label, c, a, 0, 0, 360, train_id, -1, lineType=cv2.LINE_8)


def _jitter(rng: np.random.Generator, base: Color, spread: int) -> Color:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in base)


def _draw_sky(canvas: Canvas, rng: np.random.Generator, horizon: int) -> None:
    height, width = canvas.label.shape
    top = np.array(_jitter(rng, (215, 150, 90), 25), np.float32)
    bottom = np.array(_jitter(rng, (240, 215, 190), 15), np.float32)
    ramp = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    canvas.image[:horizon] = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    canvas.label[:horizon] = SKY


def _draw_buildings(canvas: Canvas, rng: np.random.Generator, horizon: int) -> None:
    height, width = canvas.label.shape
    x = -rng.integers(0, 30)
    while x < width:
        w = int(rng.integers(width // 10, width // 4))
        top = int(rng.integers(int(horizon * 0.15), int(horizon * 0.8)))
        wall = _jitter(rng, (110, 120, 135), 45)
        canvas.fill_rect(x, top, x + w, horizon + 2, wall, BUILDING)
        window = tuple(int(c * 0.55) for c in wall)
        step_x, step_y = int(rng.integers(10, 18)), int(rng.integers(12, 20))
        for wy in range(top + 6, horizon - 8, step_y):
            for wx in range(x + 5, x + w - 8, step_x):
                canvas.fill_rect(wx, wy, wx + step_x // 2, wy + step_y // 2, window, BUILDING)
        x += w + int(rng.integers(0, 12))


def _draw_vegetation(canvas: Canvas, rng: np.random.Generator, horizon: int) -> None:
    height, width = canvas.label.shape
    for _ in range(int(rng.integers(2, 6))):
        cx = rng.uniform(0, width)
        cy = horizon - rng.uniform(0, horizon * 0.35)
        ax, ay = rng.uniform(width * 0.04, width * 0.12), rng.uniform(horizon * 0.12, horizon * 0.35)
        canvas.fill_ellipse((cx, cy), (ax, ay), _jitter(rng, (60, 140, 70), 25), VEGETATION)
        for _ in range(12):  # leafy texture: darker blobs inside the crown
            dx, dy = rng.uniform(-0.6, 0.6) * ax, rng.uniform(-0.6, 0.6) * ay
            canvas.fill_ellipse((cx + dx, cy + dy), (ax * 0.2, ay * 0.2), _jitter(rng, (40, 105, 45), 15),
                                VEGETATION)


def _draw_ground(canvas: Canvas, rng: np.random.Generator, horizon: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sidewalk band, then the road as a trapezoid to the vanishing point; returns the road's edges."""
    height, width = canvas.label.shape
    canvas.fill_rect(0, horizon, width, height, _jitter(rng, (150, 140, 170), 20), SIDEWALK)
    vanish_x = width * rng.uniform(0.35, 0.65)
    half_top = width * rng.uniform(0.02, 0.06)
    left_bottom, right_bottom = width * rng.uniform(-0.2, 0.2), width * rng.uniform(0.8, 1.2)
    left = np.array([[vanish_x - half_top, horizon], [left_bottom, height]])
    right = np.array([[vanish_x + half_top, horizon], [right_bottom, height]])
    road = np.array([left[0], right[0], right[1], left[1]])
    canvas.fill_polygon(road, _jitter(rng, (75, 75, 80), 15), ROAD)
    mark = _jitter(rng, (225, 225, 225), 10)  # dashed centre line, still labelled road
    for t0 in np.arange(0.1, 1.0, 0.18):
        t1 = t0 + 0.08
        y0, y1 = horizon + t0 * (height - horizon), horizon + t1 * (height - horizon)
        xc0 = vanish_x + t0 * ((left_bottom + right_bottom) / 2 - vanish_x)
        xc1 = vanish_x + t1 * ((left_bottom + right_bottom) / 2 - vanish_x)
        w0, w1 = 1 + 3 * t0, 1 + 3 * t1
        canvas.fill_polygon(np.array([[xc0 - w0, y0], [xc0 + w0, y0], [xc1 + w1, y1], [xc1 - w1, y1]]), mark,
                            ROAD)
    return left, right


def _x_on_edge(edge: np.ndarray, y: float) -> float:
    (x0, y0), (x1, y1) = edge
    return x0 + (y - y0) / (y1 - y0) * (x1 - x0)


def _draw_pole_with_sign(canvas: Canvas, rng: np.random.Generator, x: float, base_y: float, scale: float) -> None:
    pole_h = 150 * scale
    pole_w = max(3.0, 6 * scale)
    canvas.fill_rect(x - pole_w / 2, base_y - pole_h, x + pole_w / 2, base_y, _jitter(rng, (95, 95, 95), 15), POLE)
    sign_r = max(5.0, 16 * scale)
    cy = base_y - pole_h - sign_r * 0.6
    kind = rng.integers(0, 3)
    if kind == 0:  # round prohibition sign
        canvas.fill_ellipse((x, cy), (sign_r, sign_r), (40, 40, 215), TRAFFIC_SIGN)
        canvas.fill_ellipse((x, cy), (sign_r * 0.7, sign_r * 0.7), (235, 235, 235), TRAFFIC_SIGN)
    elif kind == 1:  # warning triangle
        tri = np.array([[x, cy - sign_r], [x + sign_r, cy + sign_r * 0.8], [x - sign_r, cy + sign_r * 0.8]])
        canvas.fill_polygon(tri, (30, 200, 240), TRAFFIC_SIGN)
    else:  # blue information plate
        canvas.fill_rect(x - sign_r, cy - sign_r * 0.8, x + sign_r, cy + sign_r * 0.8, (170, 90, 20), TRAFFIC_SIGN)


def _draw_person(canvas: Canvas, rng: np.random.Generator, x: float, base_y: float, scale: float) -> None:
    body_h, body_w = 70 * scale, 14 * scale
    clothes = _jitter(rng, tuple(int(c) for c in rng.integers(30, 220, 3)), 0)
    canvas.fill_rect(x - body_w * 0.35, base_y - body_h * 0.45, x - body_w * 0.05, base_y, (60, 50, 45), PERSON)
    canvas.fill_rect(x + body_w * 0.05, base_y - body_h * 0.45, x + body_w * 0.35, base_y, (60, 50, 45), PERSON)
    canvas.fill_ellipse((x, base_y - body_h * 0.65), (body_w / 2, body_h * 0.22), clothes, PERSON)
    canvas.fill_ellipse((x, base_y - body_h * 0.93), (body_w * 0.3, body_w * 0.3), (120, 160, 210), PERSON)


def _draw_car(canvas: Canvas, rng: np.random.Generator, x: float, base_y: float, scale: float) -> None:
    w, h = 120 * scale, 55 * scale
    body = tuple(int(c) for c in rng.integers(20, 235, 3))
    canvas.fill_rect(x - w / 2, base_y - h * 0.6, x + w / 2, base_y - h * 0.1, body, CAR)
    cabin = np.array([[x - w * 0.3, base_y - h * 0.6], [x - w * 0.2, base_y - h], [x + w * 0.22, base_y - h],
                      [x + w * 0.32, base_y - h * 0.6]])
    canvas.fill_polygon(cabin, body, CAR)
    glass = (200, 170, 140)
    canvas.fill_polygon(np.array([[x - w * 0.24, base_y - h * 0.62], [x - w * 0.17, base_y - h * 0.93],
                                  [x + w * 0.19, base_y - h * 0.93], [x + w * 0.26, base_y - h * 0.62]]), glass, CAR)
    for wx in (x - w * 0.3, x + w * 0.3):
        canvas.fill_ellipse((wx, base_y - h * 0.12), (h * 0.18, h * 0.18), (25, 25, 25), CAR)


def draw_scene(seed: int, index: int, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """One street scene: a BGR uint8 image and its uint8 train-id label, both ``height x width``."""
    rng = np.random.default_rng([seed, index])
    canvas = Canvas(np.zeros((height, width, 3), np.uint8), np.full((height, width), IGNORE, np.uint8))
    horizon = int(height * rng.uniform(0.35, 0.55))
    _draw_sky(canvas, rng, horizon)
    _draw_buildings(canvas, rng, horizon)
    _draw_vegetation(canvas, rng, horizon)
    left, right = _draw_ground(canvas, rng, horizon)

    # Objects, far to near so nearer ones occlude; size grows with distance below the horizon.
    objects = []
    for _ in range(int(rng.integers(2, 5))):
        objects.append(('car', rng.uniform(horizon + 0.15 * (height - horizon), height * 0.97)))
    for _ in range(int(rng.integers(1, 4))):
        objects.append(('person', rng.uniform(horizon + 0.1 * (height - horizon), height * 0.95)))
    for _ in range(int(rng.integers(1, 3))):
        objects.append(('pole', rng.uniform(horizon + 0.2 * (height - horizon), height * 0.9)))
    for kind, base_y in sorted(objects, key=lambda item: item[1]):
        scale = (base_y - horizon) / (height - horizon) * height / 256 * 1.6
        road_l, road_r = _x_on_edge(left, base_y), _x_on_edge(right, base_y)
        if kind == 'car':
            _draw_car(canvas, rng, rng.uniform(road_l + 30 * scale, road_r - 30 * scale), base_y, scale)
        else:
            on_left = rng.random() < 0.5
            x = rng.uniform(0, max(1.0, road_l - 8)) if on_left else rng.uniform(min(width - 1.0, road_r + 8), width)
            (_draw_person if kind == 'person' else _draw_pole_with_sign)(canvas, rng, x, base_y, scale)

    if rng.random() < 0.5:  # ego-vehicle hood, ignored as in Cityscapes
        hood_top = height - int(height * rng.uniform(0.04, 0.08))
        canvas.fill_rect(0, hood_top, width, height, (20, 20, 25), IGNORE)

    # Lighting: global gain and tint, a soft shadow, sensor noise. Labels are unaffected.
    image = canvas.image.astype(np.float32)
    image *= rng.uniform(0.55, 1.3) * rng.uniform(0.85, 1.15, size=3)
    if rng.random() < 0.5:
        x0 = int(rng.uniform(0, width * 0.7))
        image[:, x0:x0 + int(width * rng.uniform(0.1, 0.3))] *= rng.uniform(0.5, 0.8)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), canvas.label


def write_split(root: Path, split: str, count: int, seed: int, height: int, width: int, offset: int) -> None:
    """Write scenes ``offset`` .. ``offset + count - 1`` as the ``split`` split, spread over its cities."""
    cities = CITIES[split]
    for i in range(count):
        city = cities[i % len(cities)]
        stem = f'{city}_{i // len(cities):06d}_{19:06d}'
        image, label = draw_scene(seed, offset + i, height, width)
        image_dir = root / 'leftImg8bit' / split / city
        label_dir = root / 'gtFine' / split / city
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for path, array in ((image_dir / f'{stem}_leftImg8bit.png', image),
                            (label_dir / f'{stem}_gtFine_labelTrainIds.png', label),
                            (label_dir / f'{stem}_gtFine_labelIds.png', TRAIN_ID_TO_LABEL_ID[label])):
            if not cv2.imwrite(str(path), array):
                raise OSError(f'could not write {path}')


MIN_SIDE = 64  # the smallest scene the drawing code lays out (horizon, objects, hood)


def write_demo_dataset(root: Path, train: int, val: int, seed: int = 0, height: int = 256,
                       width: int = 512) -> None:
    """Write ``train`` and ``val`` scenes of ``height`` x ``width`` under ``root`` (created if absent).

    Raises:
        ValueError: a count below 1 or a side below :data:`MIN_SIDE`, naming the value.
    """
    for name, value in (('train', train), ('val', val)):
        if value < 1:
            raise ValueError(f'{name} must be positive, got {value}')
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(f'scenes need at least {MIN_SIDE}x{MIN_SIDE} pixels, got {height}x{width}')
    root = Path(root)
    # Validation scenes use indices after the training ones, so the splits never share a scene.
    write_split(root, 'train', train, seed, height, width, offset=0)
    write_split(root, 'val', val, seed, height, width, offset=train)
