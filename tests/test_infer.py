"""tools/infer.py: images, folders and a video through MMSegInferencer; clear errors for bad inputs."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from utils import run_tool



pytestmark = pytest.mark.slow


def _val_images(data: Path):
    return sorted((data / 'leftImg8bit' / 'val').rglob('*.png'))


def test_folder_and_video_give_labels_colours_and_overlays(trained_run, tiny_data, tmp_path):
    config, work_dir, _ = trained_run
    video = tmp_path / 'drive.mp4'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 5, (128, 64))
    for path in _val_images(tiny_data):
        writer.write(cv2.imread(str(path)))
    writer.release()
    out = tmp_path / 'out'
    proc = run_tool(['infer.py', config, work_dir / 'iter_4.pth', tiny_data / 'leftImg8bit' / 'val', video,
                     '--out-dir', out], cwd=tmp_path)
    assert '[infer] 4 images and 4 video frames segmented' in proc.stdout
    for path in _val_images(tiny_data):
        stem = path.stem
        labels = cv2.imread(str(out / f'{stem}_labels.png'), cv2.IMREAD_UNCHANGED)
        color = cv2.imread(str(out / f'{stem}_color.png'))
        overlay = cv2.imread(str(out / f'{stem}_overlay.png'))
        image = cv2.imread(str(path))
        assert labels.shape == (64, 128) and labels.max() < 19
        assert color.shape == overlay.shape == image.shape
        expected = (image.astype(np.float32) * 0.5 + color.astype(np.float32) * 0.5).round()
        assert np.abs(overlay.astype(np.float32) - expected).max() <= 1
    assert len(list((out / 'drive_labels').glob('*.png'))) == 4
    frames = cv2.VideoCapture(str(out / 'drive_overlay.mp4'))
    assert int(frames.get(cv2.CAP_PROP_FRAME_COUNT)) == 4


def test_unreadable_image_is_named(trained_run, tmp_path):
    config, work_dir, _ = trained_run
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not an image')
    proc = run_tool(['infer.py', config, work_dir / 'iter_4.pth', broken, '--out-dir', tmp_path / 'o'], cwd=tmp_path,
                    expect_ok=False)
    assert proc.returncode == 2 and f'cannot decode image: {broken}' in proc.stderr


@pytest.mark.parametrize('name, message', [('missing.png', 'input not found'), ('notes.txt', 'unsupported input type')])
def test_bad_inputs_are_refused_before_loading_the_model(trained_run, tmp_path, name, message):
    config, work_dir, _ = trained_run
    if name.endswith('.txt'):
        (tmp_path / name).write_text('x')
    proc = run_tool(['infer.py', config, work_dir / 'iter_4.pth', tmp_path / name, '--out-dir', tmp_path / 'o'],
                    cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2 and f'{message}: {tmp_path / name}' in proc.stderr
