"""Write a small Cityscapes-layout dataset of procedurally drawn street scenes.

The scenes, their labels and the layout are described in :mod:`mmseg_ext.datasets.demo_scenes`; the same
arguments give byte-identical files.

Example::

    python tools/dataset_converters/make_demo_data.py data/demo_cityscapes --train 120 --val 30
"""
import argparse
import sys
from pathlib import Path

from mmseg_ext.datasets.demo_scenes import write_demo_dataset


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', type=Path, help='dataset root to write (e.g. data/demo_cityscapes)')
    parser.add_argument('--train', type=int, default=120, help='number of training scenes')
    parser.add_argument('--val', type=int, default=30, help='number of validation scenes')
    parser.add_argument('--height', type=int, default=256)
    parser.add_argument('--width', type=int, default=512)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        write_demo_dataset(args.out, args.train, args.val, args.seed, args.height, args.width)
    except ValueError as error:
        print(f'make_demo_data.py: error: {error}', file=sys.stderr)
        return 2
    print(f'wrote {args.train} train and {args.val} val scenes ({args.height}x{args.width}) to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
