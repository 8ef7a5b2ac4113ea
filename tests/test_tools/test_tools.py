"""tools/train.py and tools/test.py end to end on a tiny generated dataset with mmseg's own ERFNet."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from utils import REPO, TOOLS, run_tool, write_tiny_config



pytestmark = pytest.mark.slow


def _iters_logged(log: str):
    return [int(n) for n in re.findall(r'Iter\(train\) \[\s*(\d+)/', log)]


def test_train_writes_checkpoints_and_evaluates(trained_run):
    _, work_dir, log = trained_run
    assert (work_dir / 'iter_2.pth').is_file() and (work_dir / 'iter_4.pth').is_file()
    assert Path((work_dir / 'last_checkpoint').read_text().strip()) == work_dir / 'iter_4.pth'
    assert _iters_logged(log) == [1, 2, 3, 4]
    assert re.search(r'Iter\(val\) \[4/4\].*mIoU', log), log[-3000:]


def test_resume_from_path_continues_the_schedule(trained_run, tmp_path):
    config, work_dir, _ = trained_run
    run_dir = tmp_path / 'resumed'
    proc = run_tool(['train.py', config, '--work-dir', run_dir, '--resume', work_dir / 'iter_2.pth'], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 0, iter: 2' in log
    assert _iters_logged(log) == [3, 4]
    assert (run_dir / 'iter_4.pth').is_file()


def test_load_from_initialises_a_new_run(trained_run, tmp_path):
    config, work_dir, _ = trained_run
    proc = run_tool(['train.py', config, '--work-dir', tmp_path / 'finetune', '--cfg-options',
                     f'load_from={work_dir / "iter_4.pth"}', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2'],
                    cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert f'Load checkpoint from {work_dir / "iter_4.pth"}' in log
    assert _iters_logged(log) == [1, 2]


def test_interrupted_run_resumes_from_its_last_checkpoint(tiny_data, tmp_path):
    config = write_tiny_config(tmp_path / 'long.py', tiny_data, max_iters=400)
    work_dir = tmp_path / 'run'
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, str(TOOLS / 'train.py'), str(config), '--work-dir', str(work_dir)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (work_dir / 'iter_4.pth').exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the harshest interruption: no clean-up runs
    proc.wait()
    assert (work_dir / 'iter_4.pth').exists(), 'training never reached its second checkpoint'
    last = Path((work_dir / 'last_checkpoint').read_text().strip())
    named = int(re.search(r'iter_(\d+)\.pth', last.name).group(1))
    # Checkpoints are renamed into place complete, and last_checkpoint is pointed at them afterwards: killed
    # between the two, it still names the previous one, and --resume takes the newest complete file.
    done = max(int(re.fullmatch(r'iter_(\d+)\.pth', path.name).group(1)) for path in work_dir.glob('iter_*.pth'))
    assert 2 <= named <= done < 400 and done - named in (0, 2)

    resumed = run_tool(['train.py', config, '--work-dir', work_dir, '--resume', '--cfg-options',
                        f'train_cfg.max_iters={done + 2}', f'train_cfg.val_interval={done + 2}'], cwd=tmp_path)
    log = resumed.stdout + resumed.stderr
    assert f'resumed epoch: 0, iter: {done}' in log
    assert _iters_logged(log) == [done + 1, done + 2]


def test_test_tool_reports_miou_and_writes_outputs(trained_run, tmp_path, tiny_data):
    config, work_dir, _ = trained_run
    proc = run_tool(['test.py', config, work_dir / 'iter_4.pth', '--work-dir', tmp_path / 'test', '--show-dir',
                     'overlays', '--out', tmp_path / 'preds'], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    miou = float(re.search(r'\[test\] aAcc: [\d.]+\s+mIoU: ([\d.]+)', out).group(1))
    assert 0.0 <= miou <= 100.0
    assert re.search(r'\|\s+road\s+\|', out), 'the per-class IoU table is missing'
    overlays = sorted((tmp_path / 'test' / 'overlays' / 'vis_data' / 'vis_image').glob('*.png'))
    predictions = sorted((tmp_path / 'preds').glob('*.png'))
    assert len(overlays) == len(predictions) == 4  # every val image
    label = cv2.imread(str(predictions[0]), cv2.IMREAD_UNCHANGED)
    assert label.shape == (64, 128) and label.max() < 19


def test_mmseg_config_runs_through_the_tools(tmp_path, tiny_data):
    # mmseg's packaged config, only the data and schedule shrunk on the command line.
    proc = run_tool(['train.py', 'mmseg::erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py', '--work-dir',
                     tmp_path / 'run', '--cfg-options', f'train_dataloader.dataset.data_root={tiny_data}',
                     f'val_dataloader.dataset.data_root={tiny_data}', f'test_dataloader.dataset.data_root={tiny_data}',
                     'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
                     'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
                     'val_dataloader.persistent_workers=False', 'train_cfg.max_iters=1', 'train_cfg.val_interval=1',
                     'model.data_preprocessor.size=[64,128]', 'model.backbone.type=mmseg_ext.ERFNet', 'default_hooks.logger.interval=1',
                     'train_dataloader.dataset.pipeline.2.scale=(128,64)', 'train_dataloader.dataset.pipeline.3.crop_size=(64,128)',
                     'val_dataloader.dataset.pipeline.1.scale=(128,64)', 'test_dataloader.dataset.pipeline.1.scale=(128,64)'],
                    cwd=tmp_path)
    assert _iters_logged(proc.stdout + proc.stderr) == [1]


@pytest.mark.parametrize('tool', ['train.py', 'test.py'])
def test_missing_config_is_named(tool, tmp_path):
    args = [tool, tmp_path / 'nope.py'] + ([tmp_path / 'x.pth'] if tool == 'test.py' else [])
    proc = run_tool(args, cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2
    assert f'config file not found: {tmp_path / "nope.py"}' in proc.stderr


def test_missing_data_root_is_named(tmp_path):
    config = write_tiny_config(tmp_path / 'c.py', tmp_path / 'no_data')
    proc = run_tool(['train.py', config], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2
    assert f"data root '{tmp_path / 'no_data'}' does not exist" in proc.stderr


def test_missing_checkpoint_is_named(trained_run, tmp_path):
    config, _, _ = trained_run
    proc = run_tool(['test.py', config, tmp_path / 'missing.pth'], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2 and f'checkpoint not found: {tmp_path / "missing.pth"}' in proc.stderr


def _copy_dataset(src: Path, dst: Path) -> Path:
    subprocess.run(['cp', '-r', str(src), str(dst)], check=True)
    return dst


def test_image_without_label_is_named(tiny_data, tmp_path):
    data = _copy_dataset(tiny_data, tmp_path / 'data')
    label = sorted((data / 'gtFine' / 'val').rglob('*_gtFine_labelTrainIds.png'))[0]
    label.unlink()
    proc = run_tool(['train.py', write_tiny_config(tmp_path / 'c.py', data)], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2
    assert f'has no label map: {label} does not exist' in proc.stderr


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'empty'])
def test_corrupt_image_is_named(tiny_data, tmp_path, damage):
    data = _copy_dataset(tiny_data, tmp_path / 'data')
    image = sorted((data / 'leftImg8bit' / 'train').rglob('*.png'))[1]
    content = image.read_bytes()
    image.write_bytes({'truncate': content[:len(content) // 2], 'garbage': os.urandom(500), 'empty': b''}[damage])
    proc = run_tool(['train.py', write_tiny_config(tmp_path / 'c.py', data)], cwd=tmp_path, expect_ok=False)
    assert proc.returncode == 2
    assert re.search(rf'corrupt image \(.*\): {re.escape(str(image))}', proc.stderr), proc.stderr


# --- checkpoints that cannot be used: one line on stderr and exit status 2 from every tool -------------------

def _tool_command(tool: str, config: Path, checkpoint: Path, tmp_path: Path, image: Path) -> list:
    return {
        'test.py': ['test.py', config, checkpoint, '--work-dir', tmp_path / 'w'],
        'infer.py': ['deployment/infer.py', config, checkpoint, image, '--out-dir', tmp_path / 'o'],
        'benchmark.py': ['analysis_tools/benchmark.py', config, checkpoint, '--shape', 64, 128, '--repeats', 1,
                         '--warmup', 0, '--no-flops'],
        'convert_checkpoint.py': ['model_converters/convert_checkpoint.py', checkpoint, tmp_path / 'converted.pth'],
        'train.py load_from': ['train.py', config, '--work-dir', tmp_path / 'w', '--cfg-options',
                               f'load_from={checkpoint}'],
        'train.py --resume': ['train.py', config, '--work-dir', tmp_path / 'w', '--resume', checkpoint],
    }[tool]


def _single_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a refused checkpoint prints; only the stack's import-time warnings may precede it."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines()
             if not re.search(r'\w+Warning: ', line) and not line.startswith('  ')]
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == lines[0]
    return lines[0]


DIAGNOSES = ['random_bytes', 'truncated_zip', 'hostile_pickle']  # not a checkpoint, damaged, unsafe
# Every diagnosis through test.py and infer.py, and each other tool with one of them (every file kind is
# diagnosed in test_checkpoint_files.py; the tools share mmseg_ext.checkpoint.safe_unpickler's loader).
TOOL_CASES = ([('test.py', sample) for sample in DIAGNOSES] + [('infer.py', sample) for sample in DIAGNOSES]
              + [('benchmark.py', 'truncated_zip'), ('convert_checkpoint.py', 'random_bytes'),
                 ('train.py load_from', 'hostile_pickle'), ('train.py --resume', 'truncated_zip')])


@pytest.mark.parametrize('tool, sample', TOOL_CASES)
def test_unusable_checkpoint_is_one_line_from_every_tool(tool, sample, trained_run, tiny_data, tmp_path):
    from utils import UNUSABLE_CHECKPOINTS, write_sample
    config, work_dir, _ = trained_run
    checkpoint = write_sample(sample, tmp_path, work_dir / 'iter_4.pth')
    image = sorted((tiny_data / 'leftImg8bit' / 'val').rglob('*.png'))[0]
    proc = run_tool(_tool_command(tool, config, checkpoint, tmp_path, image), cwd=tmp_path, expect_ok=False)
    line = _single_error_line(proc)
    assert UNUSABLE_CHECKPOINTS[sample][1] in line and str(checkpoint) in line
    assert not (tmp_path / 'pwned').exists()


def _other_class_count_checkpoint(work_dir: Path, path: Path) -> Path:
    import torch
    checkpoint = torch.load(work_dir / 'iter_4.pth', weights_only=False)
    state = checkpoint['state_dict']
    state['decode_head.conv_seg.weight'] = state['decode_head.conv_seg.weight'][:7].clone()
    state['decode_head.conv_seg.bias'] = state['decode_head.conv_seg.bias'][:7].clone()
    torch.save({'meta': {}, 'state_dict': state}, path)
    return path


@pytest.mark.parametrize('tool', ['test.py', 'infer.py', 'benchmark.py'])
def test_weights_that_do_not_fit_are_refused_before_any_work(tool, trained_run, tiny_data, tmp_path):
    config, work_dir, _ = trained_run
    checkpoint = _other_class_count_checkpoint(work_dir, tmp_path / 'seven_classes.pth')
    image = sorted((tiny_data / 'leftImg8bit' / 'val').rglob('*.png'))[0]
    proc = run_tool(_tool_command(tool, config, checkpoint, tmp_path, image), cwd=tmp_path, expect_ok=False)
    line = _single_error_line(proc)
    assert 'weights do not fit the model' in line and '2 of another shape' in line
    assert 'another class count: the checkpoint predicts 7 classes, the model 19' in line
    assert 'Iter(test)' not in proc.stdout and not (tmp_path / 'o').exists()  # no evaluation, no outputs


def test_partial_weights_are_evaluated_only_when_asked(trained_run, tmp_path):
    config, work_dir, _ = trained_run
    checkpoint = _other_class_count_checkpoint(work_dir, tmp_path / 'seven_classes.pth')
    proc = run_tool(['test.py', config, checkpoint, '--work-dir', tmp_path / 'w', '--allow-partial-weights'],
                    cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert 'weights do not fit the model' in out and re.search(r'\[test\] aAcc', out)


def test_load_from_keeps_mmengine_behaviour_and_logs_the_fit(trained_run, tmp_path):
    config, work_dir, _ = trained_run
    checkpoint = _other_class_count_checkpoint(work_dir, tmp_path / 'seven_classes.pth')
    proc = run_tool(['train.py', config, '--work-dir', tmp_path / 'w', '--cfg-options', f'load_from={checkpoint}',
                     'train_cfg.max_iters=1', 'train_cfg.val_interval=1'], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert 'weights do not fit the model' in log and 'another class count' in log
    assert _iters_logged(log) == [1]


@pytest.mark.parametrize('tool', ['train.py', 'test.py'])
def test_waiting_openmp_threads_sleep_unless_the_environment_says_otherwise(tool):
    # libgomp prints the settings it started with (OMP_DISPLAY_ENV): the tool must set them before torch loads it.
    env = {key: value for key, value in os.environ.items() if key not in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}
    env['OMP_DISPLAY_ENV'] = 'TRUE'
    for explicit, shown in ((None, 'PASSIVE'), ('ACTIVE', 'ACTIVE')):
        if explicit:
            env['OMP_WAIT_POLICY'] = explicit
        proc = subprocess.run([sys.executable, str(TOOLS / tool), '--help'], env=env, capture_output=True, text=True,
                              timeout=120, check=True)
        assert f"OMP_WAIT_POLICY = '{shown}'" in proc.stderr
