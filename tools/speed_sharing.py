"""Demo training speed alone and beside another 2-thread PyTorch job, under OpenMP waiting policies.

Each measurement runs ``tools/train.py`` on the demo config for a few iterations (no validation) and takes
the median of the per-iteration times mmengine logs, skipping the first iterations (start-up). Beside a
second job means a separate process doing 2-thread convolutions with libgomp's default waiting policy,
as another user's PyTorch job would. Conditions alternate within each round, so drifts in the machine's
load hit all of them alike; run it on an otherwise idle machine for figures worth quoting::

    python tools/speed_sharing.py                       # ERFNet demo, 20 iterations, 2 rounds
    python tools/speed_sharing.py --iters 30 --rounds 3 --json sharing.json

Policies: ``tool default`` is what ``tools/train.py`` does when the environment sets nothing;
``libgomp default`` is libgomp's own behaviour (spin up to 300000 times before sleeping, the same as
leaving both variables unset); ``spin 10k`` a shorter spin.
"""
import argparse
import json
import os
import os.path as osp
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
POLICIES: Dict[str, Dict[str, str]] = {
    'tool default': {},
    'libgomp default': {'GOMP_SPINCOUNT': '300000'},
    'spin 100k': {'GOMP_SPINCOUNT': '100000'},
    'spin 30k': {'GOMP_SPINCOUNT': '30000'},
    'spin 10k': {'GOMP_SPINCOUNT': '10000'},
}
CONDITIONS = ('alone', 'beside')
_OPENMP_VARIABLES = ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')
# The second job: 2-thread convolutions in a loop, default libgomp settings.
_BUSY_JOB = """
import torch
torch.set_num_threads(2)
conv = torch.nn.Conv2d(64, 64, 3, padding=1)
x = torch.randn(4, 64, 96, 96)
with torch.no_grad():
    while True:
        conv(x)
"""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='configs/_demo_/erfnet.py', help='training config (the demo)')
    parser.add_argument('--data-root', default='data/demo_cityscapes', help='demo data (made if missing)')
    parser.add_argument('--iters', type=int, default=20, help='training iterations per measurement')
    parser.add_argument('--skip', type=int, default=4, help='first iterations left out of the median')
    parser.add_argument('--rounds', type=int, default=2, help='alternating rounds over all conditions')
    parser.add_argument('--policies', nargs='+', default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument('--conditions', nargs='+', default=list(CONDITIONS), choices=CONDITIONS,
                        help='alone, beside a second 2-thread job, or both')
    parser.add_argument('--json', help='also write the raw results here')
    args = parser.parse_args(argv)
    if args.iters <= args.skip:
        parser.error(f'--iters ({args.iters}) must exceed --skip ({args.skip})')
    return args


def clean_environment(policy: str) -> Dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _OPENMP_VARIABLES}
    env.update(POLICIES[policy], PYTHONUNBUFFERED='1')
    return env


def train_iteration_times(args: argparse.Namespace, policy: str, work_dir: str) -> List[float]:
    """Per-iteration times (s) mmengine logged for one short training run."""
    command = [sys.executable, osp.join(REPO, 'tools', 'train.py'), args.config, '--work-dir', work_dir,
               '--no-preflight', '--cfg-options', f'train_cfg.max_iters={args.iters}',
               f'train_cfg.val_interval={args.iters + 1}', 'val_cfg=None', 'val_dataloader=None',
               'val_evaluator=None', 'default_hooks.logger.interval=1',
               f'default_hooks.checkpoint.interval={args.iters + 1}', 'default_hooks.checkpoint.save_last=False',
               f'train_dataloader.dataset.data_root={osp.abspath(args.data_root)}']
    proc = subprocess.run(command, cwd=REPO, env=clean_environment(policy), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'training failed ({policy}):\n{proc.stderr[-3000:]}')
    log = proc.stdout + proc.stderr
    times = [float(t) for t in re.findall(r'Iter\(train\) \[\s*\d+/\d+\].*?\btime: ([\d.]+)', log)]
    if len(times) < args.iters:
        raise RuntimeError(f'found {len(times)} iteration times in the log, expected {args.iters}')
    return times[args.skip:]


def measure(args: argparse.Namespace, policy: str, beside_job: bool) -> float:
    busy = None
    if beside_job:
        busy = subprocess.Popen([sys.executable, '-c', _BUSY_JOB], env=clean_environment('libgomp default'))
        time.sleep(2)  # let it reach its loop
    try:
        with tempfile.TemporaryDirectory() as work_dir:
            return statistics.median(train_iteration_times(args, policy, work_dir))
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not osp.isdir(args.data_root):
        subprocess.run([sys.executable, osp.join(REPO, 'tools', 'make_demo_data.py'), args.data_root], check=True)
    results: Dict[str, Dict[str, List[float]]] = {p: {'alone': [], 'beside': []} for p in args.policies}
    for round_index in range(args.rounds):
        for policy in args.policies:
            for condition in args.conditions:
                seconds = measure(args, policy, condition == 'beside')
                results[policy][condition].append(seconds)
                print(f'[round {round_index + 1}] {policy:16s} {condition:6s} {seconds:.3f} s/iter', flush=True)
    print(f'\nload average at the end: {os.getloadavg()[0]:.2f} (1 min), cpus: {os.cpu_count()}')
    print('| policy | alone (s/iter) | beside a 2-thread job (s/iter) | slow-down |')
    print('|---|---:|---:|---:|')
    for policy, runs in results.items():
        alone, beside = (statistics.median(runs[c]) if runs[c] else float('nan') for c in CONDITIONS)
        print(f'| {policy} | {alone:.3f} | {beside:.3f} | {beside / alone:.2f}x |')
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as file:
            json.dump(dict(config=args.config, iters=args.iters, skip=args.skip, results=results), file, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
