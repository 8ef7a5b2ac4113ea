"""Check a downloaded Cityscapes and make the train-id label maps mmseg trains on.

Expects ``ROOT/leftImg8bit/{train,val}`` and ``ROOT/gtFine/{train,val}`` as unzipped from
``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``. For every image it needs the fine
polygons (``*_gtFine_polygons.json``); from them it writes ``*_gtFine_labelTrainIds.png`` with
cityscapesscripts' ``json2labelImg`` in several processes (files already there are kept unless
``--overwrite``). It then checks the split sizes (2975 train, 500 val) and lists exactly what is
missing when the download is incomplete, exiting with status 2.

Example::

    python tools/dataset_converters/prepare_cityscapes.py data/cityscapes --nproc 8
"""
import argparse
import os
import os.path as osp
import sys
from multiprocessing import Pool
from typing import Dict, List, Tuple

from rich.progress import Progress

EXPECTED_IMAGES = {'train': 2975, 'val': 500}
IMAGE_SUFFIX = '_leftImg8bit.png'
POLYGON_SUFFIX = '_gtFine_polygons.json'
TRAIN_ID_SUFFIX = '_gtFine_labelTrainIds.png'


def _images(root: str, split: str) -> List[str]:
    """Image paths of ``split`` relative to ``leftImg8bit/<split>`` (``city/name_leftImg8bit.png``)."""
    base = osp.join(root, 'leftImg8bit', split)
    return sorted(osp.relpath(osp.join(d, f), base) for d, _, files in os.walk(base) for f in files
                  if f.endswith(IMAGE_SUFFIX))


def find_problems(root: str, expected: Dict[str, int]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """What is missing, and the ``(polygons, train-id label)`` conversions to run.

    Returns:
        ``(problems, jobs)``: human-readable lines naming each missing folder or file and each split of
        the wrong size; conversions for the images whose train-id label is missing.
    """
    problems, jobs = [], []
    for folder in ('leftImg8bit', 'gtFine'):
        for split in expected:
            if not osp.isdir(osp.join(root, folder, split)):
                problems.append(f'missing folder: {osp.join(root, folder, split)} '
                                f'(unzip {folder}_trainvaltest.zip into {root})')
    if problems:
        return problems, jobs
    for split, count in expected.items():
        images = _images(root, split)
        if len(images) != count:
            problems.append(f'{split}: {len(images)} images in {osp.join(root, "leftImg8bit", split)}, '
                            f'expected {count}')
        for image in images:
            stem = osp.join(root, 'gtFine', split, image[:-len(IMAGE_SUFFIX)])
            polygons, label = stem + POLYGON_SUFFIX, stem + TRAIN_ID_SUFFIX
            if osp.isfile(polygons):
                jobs.append((polygons, label))
            elif not osp.isfile(label):
                problems.append(f'{split}: no annotation for {image}: {polygons} is missing')
    return problems, jobs


def _convert(job: Tuple[str, str]) -> None:
    from cityscapesscripts.preparation.json2labelImg import json2labelImg
    polygons, label = job
    json2labelImg(polygons, label, 'trainIds')


def convert(jobs: List[Tuple[str, str]], nproc: int) -> None:
    """Write the train-id label maps, with a progress bar."""
    with Progress() as progress, Pool(nproc) as pool:
        task = progress.add_task('train-id labels', total=len(jobs))
        for _ in pool.imap_unordered(_convert, jobs, chunksize=8):
            progress.advance(task)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Check Cityscapes and make its train-id labels')
    parser.add_argument('root', help='Cityscapes root holding leftImg8bit/ and gtFine/')
    parser.add_argument('--nproc', type=int, default=os.cpu_count(), help='conversion processes')
    parser.add_argument('--overwrite', action='store_true', help='rewrite train-id labels that exist')
    parser.add_argument('--expect-train', type=int, default=EXPECTED_IMAGES['train'],
                        help='number of train images to require (a subset for experiments)')
    parser.add_argument('--expect-val', type=int, default=EXPECTED_IMAGES['val'], help='number of val images')
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f'--nproc must be at least 1, got {args.nproc}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isdir(args.root):
        print(f'error: Cityscapes root not found: {args.root}', file=sys.stderr)
        return 2
    try:
        import cityscapesscripts  # noqa: F401
    except ImportError:
        print('error: cityscapesscripts is not installed (pip install cityscapesscripts)', file=sys.stderr)
        return 2
    problems, jobs = find_problems(args.root, {'train': args.expect_train, 'val': args.expect_val})
    if not args.overwrite:
        jobs = [(polygons, label) for polygons, label in jobs if not osp.isfile(label)]
    if jobs:
        convert(jobs, args.nproc)
    print(f'[cityscapes] wrote {len(jobs)} train-id label maps under {osp.join(args.root, "gtFine")}')
    if problems:
        print(f'error: {args.root} is incomplete ({len(problems)} problems):', file=sys.stderr)
        for line in problems:
            print(f'  {line}', file=sys.stderr)
        return 2
    print(f'[cityscapes] {args.root} is complete: {args.expect_train} train and {args.expect_val} val images '
          'with train-id labels')
    return 0


if __name__ == '__main__':
    sys.exit(main())
