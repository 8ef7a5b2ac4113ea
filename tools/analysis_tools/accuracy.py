"""Accuracy by inference path: each demo model evaluated along every path the plugin offers (``make accuracy``).

For each model (``configs/_demo_/<name>.py``) the tool trains it with ``tools/train.py`` unless its work dir
already holds a finished run (seeded: the demo configs fix ``randomness.seed``), exports it with
``tools/deployment/export_onnx.py`` (float32, and int8 calibrated on the demo train split), then evaluates it with
``tools/test.py`` on the demo val split along every path:

* float32 eager as configured; float32 eager with BN folded (``--fuse-conv-bn``); float32 compiled
  (``--compile``); bf16 (``--precision bf16``);
* ONNX Runtime float32 and int8; OpenVINO float32 and bf16 (``--runtime openvino``).

It writes a generated Markdown table (mIoU, difference to float32 eager, share of pixels labelled as float32
eager labels them, median time per image) and a chart of time per image against mIoU. Every figure in those
files comes from this run; a path that fails is listed with its error and the tool exits non-zero.

Example::

    python tools/analysis_tools/accuracy.py --models erfnet segformer-b0 ocrnet-hr18s --out docs/accuracy.md \\
        --chart docs/speed_vs_miou.svg
"""
import argparse
import datetime
import os
import os.path as osp
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(REPO, 'tools')


@dataclass(frozen=True)
class InferencePath:
    """One way of running a trained model: which file ``tools/test.py`` gets and with which flags."""
    name: str
    model_file: str  # 'checkpoint', 'onnx' or 'onnx-int8'
    flags: Sequence[str] = ()


PATHS = (
    InferencePath('float32 eager (as configured)', 'checkpoint'),
    InferencePath('float32 eager, BN folded', 'checkpoint', ('--fuse-conv-bn', )),
    InferencePath('float32 compiled (torch.compile)', 'checkpoint', ('--compile', )),
    InferencePath('bf16 (folded, channels-last, bf16 weights)', 'checkpoint', ('--precision', 'bf16')),
    InferencePath('ONNX Runtime float32', 'onnx'),
    InferencePath('ONNX Runtime int8', 'onnx-int8'),
    InferencePath('OpenVINO float32', 'onnx', ('--runtime', 'openvino')),
    InferencePath('OpenVINO bf16', 'onnx', ('--runtime', 'openvino', '--precision', 'bf16')),
)
REFERENCE = PATHS[0].name


@dataclass
class PathResult:
    path: InferencePath
    miou: Optional[float] = None
    ms_per_image: Optional[float] = None
    same_labels: Optional[float] = None
    predictions: Optional[str] = None  # the folder of label maps tools/test.py wrote
    error: Optional[str] = None


@dataclass
class ModelResult:
    name: str
    checkpoint: str
    trained_now: bool
    rows: List[PathResult] = field(default_factory=list)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='mIoU and speed of every inference path on the demo models')
    parser.add_argument('--models', nargs='+', default=['erfnet', 'segformer-b0', 'ocrnet-hr18s'],
                        help='demo configs (configs/_demo_/<name>.py)')
    parser.add_argument('--data-root', default='data/demo_cityscapes',
                        help='the demo dataset (tools/dataset_converters/make_demo_data.py)')
    parser.add_argument('--work-root', default='work_dirs', help='runs are read from / written to <root>/demo_<name>')
    parser.add_argument('--out', default='docs/accuracy.md', help='the generated Markdown table')
    parser.add_argument('--chart', default='docs/speed_vs_miou.svg', help='the generated chart')
    parser.add_argument('--paths', nargs='+', choices=[p.name for p in PATHS], metavar='PATH',
                        help='only these paths (default: all)')
    return parser.parse_args(argv)


def run(args: List[str], log: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run ``python tools/<args...>`` (``args[0]`` relative to tools/), its output on screen (and in ``log``)
    as it comes."""
    command = [sys.executable, osp.join(TOOLS, args[0])] + [str(a) for a in args[1:]]
    print('[accuracy] $ ' + ' '.join(command[1:]), flush=True)
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONUNBUFFERED='1')) as proc:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(('[', 'error')) or 'Iter(' in line:  # progress, not mmengine's whole log
                print('    ' + line, end='', flush=True)
    output = ''.join(lines)
    if log:
        with open(log, 'w') as file:
            file.write(output)
    return subprocess.CompletedProcess(command, proc.returncode, output, '')


def trained_checkpoint(work_dir: str) -> Optional[str]:
    """The finished run's last checkpoint in ``work_dir`` (None if there is none yet)."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return None
    path = open(pointer).read().strip()
    return path if osp.isfile(path) and re.search(r'iter_(\d+)\.pth$', path) else None


def train(config: str, work_dir: str) -> str:
    os.makedirs(work_dir, exist_ok=True)
    log = osp.join(work_dir, 'train_console.log')
    proc = run(['train.py', config, '--work-dir', work_dir], log=log)
    if proc.returncode != 0:
        raise RuntimeError(f'training {config} failed (log: {log})')
    return trained_checkpoint(work_dir)


def label_agreement(predictions: str, reference: str) -> float:
    """Share of pixels whose label in ``predictions`` equals the one in ``reference`` (same file names)."""
    same = total = 0
    names = sorted(os.listdir(reference))
    if not names or sorted(os.listdir(predictions)) != names:
        raise RuntimeError(f'{predictions} and {reference} do not hold the same label maps')
    for name in names:
        a = cv2.imread(osp.join(predictions, name), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(osp.join(reference, name), cv2.IMREAD_UNCHANGED)
        same += int(np.count_nonzero(a == b))
        total += b.size
    return same / total


def evaluate(config: str, files: Dict[str, Optional[str]], path: InferencePath, out_dir: str,
             data_root: str) -> PathResult:
    result = PathResult(path)
    if files[path.model_file] is None:
        result.error = f'the {path.model_file} export failed (log: {out_dir}/export_{path.model_file}.log)'
        return result
    slug = re.sub(r'[^a-z0-9]+', '_', path.name.lower()).strip('_')
    predictions = osp.join(out_dir, slug)
    proc = run(['test.py', config, files[path.model_file], '--work-dir', osp.join(out_dir, 'logs'), '--out',
                predictions, *path.flags, '--cfg-options', f'test_dataloader.dataset.data_root={data_root}'],
               log=osp.join(out_dir, f'{slug}.log'))
    miou = re.search(r'\[test\] aAcc: [\d.]+\s+mIoU: ([\d.]+)', proc.stdout)
    timing = re.search(r'\[test\] time per image: ([\d.]+) ms', proc.stdout)
    if proc.returncode != 0 or not miou or not timing:
        errors = [line for line in proc.stdout.splitlines() if line.startswith('error')]
        result.error = errors[-1] if errors else f'exit code {proc.returncode} (log: {out_dir}/{slug}.log)'
        return result
    result.miou, result.ms_per_image = float(miou.group(1)), float(timing.group(1))
    result.predictions = predictions
    return result


def measure_model(name: str, args: argparse.Namespace) -> ModelResult:
    config = osp.join('configs', '_demo_', f'{name}.py')
    work_dir = osp.join(args.work_root, f'demo_{name}')
    checkpoint = trained_checkpoint(work_dir)
    trained_now = checkpoint is None
    if trained_now:
        print(f'[accuracy] {name}: no finished run in {work_dir}; training it (seeded)', flush=True)
        checkpoint = train(config, work_dir)
    else:
        print(f'[accuracy] {name}: reusing {checkpoint}', flush=True)
    out_dir = osp.join(work_dir, 'accuracy')
    os.makedirs(out_dir, exist_ok=True)
    paths = [p for p in PATHS if not args.paths or p.name in args.paths or p.name == REFERENCE]
    files = {'checkpoint': checkpoint}
    for kind, extra in (('onnx', []), ('onnx-int8', ['--quantize', 'int8'])):
        if any(p.model_file == kind for p in paths):
            target = osp.join(out_dir, f'{name}_{kind.replace("-", "_")}.onnx')
            proc = run(['deployment/export_onnx.py', config, checkpoint, '--out', target, *extra, '--cfg-options',
                        f'train_dataloader.dataset.data_root={args.data_root}'],
                       log=osp.join(out_dir, f'export_{kind}.log'))
            written = re.findall(r'^\[export\] (\S+\.onnx)$', proc.stdout, flags=re.MULTILINE)
            files[kind] = written[-1] if proc.returncode == 0 and written else None
    result = ModelResult(name, checkpoint, trained_now)
    for path in paths:
        result.rows.append(evaluate(config, files, path, out_dir, args.data_root))
    reference = result.rows[0]
    for row in result.rows:
        if row.error is None and reference.error is None:
            row.same_labels = label_agreement(row.predictions, reference.predictions)
    return result


def cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    if osp.exists('/proc/cpuinfo'):
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine()


def markdown(results: List[ModelResult], seconds: float) -> str:
    lines = [
        '# Accuracy by inference path (generated by `make accuracy`; do not edit)', '',
        f'The demo models (`configs/_demo_/`, trained on the embedded demo scenes) evaluated with `tools/test.py` '
        f'on the demo val split along every path. Generated {datetime.date.today().isoformat()} on '
        f'{cpu_name()} ({os.cpu_count()} CPUs) in {seconds / 60:.0f} minutes. '
        f'"Same labels" is the share of pixels labelled as float32 eager labels them; time per image is '
        f'`tools/test.py`\'s median (preprocessing, network, postprocessing; torch and the runtimes at their '
        f'default threads).', '']
    for model in results:
        lines += [f'## {model.name}', '',
                  f'Checkpoint `{osp.relpath(model.checkpoint, REPO)}` '
                  f'({"trained by this run" if model.trained_now else "reused from an earlier run"}).', '',
                  '| path | mIoU | Δ mIoU | same labels | ms / image |', '|---|---:|---:|---:|---:|']
        reference = model.rows[0].miou
        for row in model.rows:
            if row.error:
                lines.append(f'| {row.path.name} | failed: {row.error} | | | |')
                continue
            delta = f'{row.miou - reference:+.2f}' if reference is not None else ''
            same = f'{100 * row.same_labels:.3f}%' if row.same_labels is not None else ''
            lines.append(f'| {row.path.name} | {row.miou:.2f} | {delta} | {same} | {row.ms_per_image:.1f} |')
        lines.append('')
    return '\n'.join(lines)


def chart(results: List[ModelResult], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(8, 5))
    markers = dict(zip([p.name for p in PATHS], 'osPD^v<>'))
    for model, color in zip(results, plt.rcParams['axes.prop_cycle'].by_key()['color']):
        for row in model.rows:
            if row.error is None:
                axes.scatter(row.ms_per_image, row.miou, color=color, marker=markers[row.path.name],
                             label=f'{model.name}: {row.path.name}')
    axes.set_xscale('log')
    axes.set_xlabel('time per image (ms, log scale)')
    axes.set_ylabel('mIoU on the demo val split')
    axes.set_title('Speed against accuracy per inference path')
    axes.legend(fontsize=6, ncol=2, loc='best')
    figure.tight_layout()
    figure.savefig(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isdir(osp.join(REPO, args.data_root)) and not osp.isdir(args.data_root):
        print(f'error: demo data not found: {args.data_root} (make demo-data writes it)', file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = [measure_model(name, args) for name in args.models]
    os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as file:
        file.write(markdown(results, time.perf_counter() - start))
    chart(results, args.chart)
    failed = [f'{m.name}: {r.path.name}' for m in results for r in m.rows if r.error]
    print(f'[accuracy] wrote {args.out} and {args.chart} in {(time.perf_counter() - start) / 60:.1f} minutes')
    if failed:
        print(f'error: {len(failed)} path(s) failed: {"; ".join(failed)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
