"""Plot Cityscapes mIoU against parameters (log scale): published models plus your own runs.

Published figures come from ``docs/published_cityscapes.csv`` (each row names its source; the wheel ships it
as ``mmseg_ext/.mim/docs/published_cityscapes.csv``). Rows whose parameter count was not read in a source
(``params_verified=no``) are left out unless ``--include-unverified`` is given, and then drawn hollow. Your runs are read from ``work_dirs``: every
run folder with a dumped config and a validation mIoU in its logs becomes a star, its parameters
counted from the model that config builds.

Example::

    python tools/analysis_tools/plot_results.py --work-dirs work_dirs --out docs/miou_vs_params.svg
"""
import argparse
import csv
import glob
import json
import os.path as osp
import sys
from dataclasses import dataclass
from typing import List, Optional

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_DATA = osp.join(REPO, 'docs', 'published_cityscapes.csv')


@dataclass
class Point:
    """One model on the chart."""
    label: str
    family: str
    params_m: float
    miou: float
    verified: bool = True
    own: bool = False


def read_published(path: str, include_unverified: bool) -> List[Point]:
    """Rows of the published-results file as points."""
    points = []
    with open(path, newline='') as file:
        for row in csv.DictReader(file):
            verified = row['params_verified'].strip().lower() == 'yes'
            if verified or include_unverified:
                points.append(Point(row['model'], row['family'], float(row['params_m']), float(row['miou']),
                                    verified))
    return points


def _last_val_miou(run_dir: str) -> Optional[float]:
    """The last validation mIoU logged under ``run_dir`` (mmengine's ``vis_data/scalars.json``)."""
    best = None
    for scalars in sorted(glob.glob(osp.join(run_dir, '*', 'vis_data', 'scalars.json'))):
        with open(scalars) as file:
            for line in file:
                record = json.loads(line)
                if 'mIoU' in record:
                    best = float(record['mIoU'])
    return best


def _count_params_m(config_path: str) -> float:
    from mmseg_ext.builder import build_segmentor
    model = build_segmentor(config_path)  # counting needs no pretrained weights: none are read
    return sum(p.numel() for p in model.parameters()) / 1e6


def read_own_runs(work_dirs: str) -> List[Point]:
    """One point per run folder in ``work_dirs`` that logged a validation mIoU."""
    points = []
    for run_dir in sorted(glob.glob(osp.join(work_dirs, '*'))):
        configs = sorted(glob.glob(osp.join(run_dir, '*.py')))
        miou = _last_val_miou(run_dir) if configs else None
        if miou is None:
            continue
        points.append(Point(osp.basename(run_dir), 'own runs', _count_params_m(configs[0]), miou, own=True))
    return points


def plot(points: List[Point], out: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    families = sorted({p.family for p in points if not p.own})
    colors = {family: plt.get_cmap('tab10')(i % 10) for i, family in enumerate(families)}
    colors['own runs'] = 'black'
    fig, ax = plt.subplots(figsize=(9, 6))
    for family in families + ['own runs']:
        members = [p for p in points if p.family == family]
        for p in members:
            ax.scatter(p.params_m, p.miou, s=120 if p.own else 50, marker='*' if p.own else 'o',
                       facecolors=colors[family] if p.verified else 'none', edgecolors=colors[family],
                       label=family if p is members[0] else None, zorder=3)
            ax.annotate(p.label, (p.params_m, p.miou), textcoords='offset points', xytext=(5, 4), fontsize=7)
    ax.set_xscale('log')
    ax.set_xlabel('parameters (millions, log scale)')
    ax.set_ylabel('Cityscapes val mIoU (%)')
    ax.set_title(title)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(out, format=osp.splitext(out)[1][1:].lower())
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Cityscapes mIoU against parameters')
    parser.add_argument('--out', required=True, help='output file, .png or .svg')
    parser.add_argument('--data', default=DEFAULT_DATA, help='published results (CSV)')
    parser.add_argument('--work-dirs', help='folder of your training runs (e.g. work_dirs) to add as stars')
    parser.add_argument('--include-unverified', action='store_true',
                        help='also plot rows whose parameter count was not read in a source (hollow)')
    parser.add_argument('--title', default='Cityscapes val mIoU vs. parameters')
    args = parser.parse_args(argv)
    if osp.splitext(args.out)[1].lower() not in ('.png', '.svg'):
        parser.error(f'--out must end in .png or .svg, got {args.out}')
    for path, flag in ((args.data, '--data'), (args.work_dirs, '--work-dirs')):
        if path is not None and not osp.exists(path):
            parser.error(f'{flag} not found: {path}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    points = read_published(args.data, args.include_unverified)
    own = read_own_runs(args.work_dirs) if args.work_dirs else []
    plot(points + own, args.out, args.title)
    print(f'[plot] {len(points)} published and {len(own)} own results -> {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
