"""tools/deployment/infer.py: images, folders and a video through MMSegInferencer; clear errors for bad inputs,
and a batch that goes on past inputs it cannot read."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from utils import load_tool, run_tool



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
    proc = run_tool(['deployment/infer.py', config, work_dir / 'iter_4.pth', tiny_data / 'leftImg8bit' / 'val', video,
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


def _cut_avi(path: Path, images) -> Path:
    """An MJPG AVI of ``images`` cut in half: the header still declares every frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 5, (128, 64))
    for image in images:
        writer.write(cv2.imread(str(image)))
    writer.release()
    content = path.read_bytes()
    path.write_bytes(content[:len(content) // 2])
    return path


def test_a_batch_goes_on_past_unreadable_inputs(trained_run, tiny_data, tmp_path):
    config, work_dir, _ = trained_run
    good = _val_images(tiny_data)[:2]
    folder = tmp_path / 'batch'
    folder.mkdir()
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    png = good[0].read_bytes()
    jpeg = cv2.imencode('.jpg', cv2.imread(str(good[0])))[1].tobytes()
    # names that sort before the good images, so the good ones come after the failures
    garbled, empty, cut_png, cut_jpeg = (folder / name for name in ('a_garbled.png', 'a_empty.png', 'a_cut_png.png',
                                                                    'a_cut_jpeg.jpg'))
    garbled.write_bytes(b'not an image')
    empty.write_bytes(b'')
    cut_png.write_bytes(png[:len(png) // 2])
    cut_jpeg.write_bytes(jpeg[:len(jpeg) * 3 // 4])
    cut_video = _cut_avi(tmp_path / 'cut.avi', _val_images(tiny_data))
    empty_video = tmp_path / 'empty.mp4'
    empty_video.write_bytes(b'')
    out = tmp_path / 'out'
    proc = run_tool(['deployment/infer.py', config, work_dir / 'iter_4.pth', folder, cut_video, empty_video,
                     '--out-dir', out], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]

    segmented = [path.stem for path in good + [cut_png, cut_jpeg]]
    for stem in segmented:
        for suffix in ('labels', 'color', 'overlay'):
            assert cv2.imread(str(out / f'{stem}_{suffix}.png')).shape[:2] == (64, 128), (stem, suffix)
    assert sorted(path.name for path in out.glob('*_labels.png')) == sorted(f'{stem}_labels.png' for stem in segmented)
    written_frames = len(list((out / 'cut_labels').glob('*.png')))
    assert 0 < written_frames < 4  # the frames before the cut stay

    lines = proc.stderr.splitlines()
    errors = [line for line in lines if line.startswith('error: ')]
    failed = (garbled, empty, cut_video, empty_video)
    assert len(errors) == len(failed), proc.stderr  # one line per failed input, naming it and why
    for path, reason in zip(failed, ('not a PNG file', 'empty file', 'header declares', 'cannot open video')):
        assert any(str(path) in line and reason in line for line in errors), (path, errors)
    warnings = [line for line in lines if line.startswith('warning: ')]
    for path, reason in ((cut_png, 'truncated PNG'), (cut_jpeg, 'truncated JPEG')):
        assert any(str(path) in line and reason in line for line in warnings), (path, warnings)

    assert f'[infer] 4 images and {written_frames} video frames segmented' in proc.stdout
    summary = lines[lines.index('[infer] 4 of 8 inputs failed (the others were segmented):') + 1:]
    assert sorted(summary) == sorted(f'  {line[len("error: "):]}' for line in errors)


@pytest.mark.parametrize('name, message', [('missing.png', 'input not found'), ('notes.txt', 'unsupported input type')])
def test_bad_inputs_are_refused_before_loading_the_model(trained_run, tmp_path, name, message):
    config, work_dir, _ = trained_run
    if name.endswith('.txt'):
        (tmp_path / name).write_text('x')
    proc = run_tool(['deployment/infer.py', config, work_dir / 'iter_4.pth', tmp_path / name,
                     '--out-dir', tmp_path / 'o'], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2 and f'{message}: {tmp_path / name}' in proc.stderr


def test_output_names_keep_inputs_that_share_a_name_apart():
    names = load_tool('deployment/infer').output_names(
        ['x/a/0001.png', 'x/b/0001.png', 'y/c.png', 'd/clip.png', 'd/clip.jpg', 'q/r/s.png', 'z/r/s.png', 'w/t/s.png'])
    assert names == {'x/a/0001.png': 'a__0001', 'x/b/0001.png': 'b__0001', 'y/c.png': 'c',
                     'd/clip.png': 'clip.png', 'd/clip.jpg': 'clip.jpg',
                     'q/r/s.png': 'q__r__s', 'z/r/s.png': 'z__r__s', 'w/t/s.png': 't__s'}


def test_same_named_inputs_do_not_overwrite_each_other(trained_run, tiny_data, tmp_path):
    config, work_dir, _ = trained_run
    first, second = _val_images(tiny_data)[:2]
    for folder, source in (('a', first), ('b', second)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / 'frame.png').write_bytes(source.read_bytes())
    out = tmp_path / 'out'
    proc = run_tool(['deployment/infer.py', config, work_dir / 'iter_4.pth', tmp_path / 'a', tmp_path / 'b',
                     tmp_path / 'a' / 'frame.png', '--out-dir', out], cwd=tmp_path)
    assert '[infer] 2 images and 0 video frames segmented' in proc.stdout  # the repeated file once
    assert 'their outputs are named a__frame, b__frame' in proc.stdout
    assert sorted(path.name for path in out.iterdir()) == sorted(
        f'{name}_{kind}.png' for name in ('a__frame', 'b__frame') for kind in ('labels', 'color', 'overlay'))
    overlays = [cv2.imread(str(out / f'{name}_overlay.png')) for name in ('a__frame', 'b__frame')]
    assert not np.array_equal(*overlays)
