"""Assemble ``tools/benchmark.py --json`` results into one Markdown table (used by ``make bench``).

Example::

    python tools/benchmark_table.py work_dirs/bench/*.json --out docs/benchmark_cpu.md
"""
import argparse
import json
import os.path as osp
import sys


def row(result: dict) -> str:
    """One table row: the plugin's result against mmseg's."""
    ours_name = next(name for name in result['results'] if name.startswith('mmseg_ext'))
    ours, theirs = result['results'][ours_name], result['results'].get('mmseg')
    if theirs is None or result.get('comparison') is None:
        raise ValueError(f"{result['config']}: run tools/benchmark.py with --compare-mmseg for the table")
    switches = ours_name[len('mmseg_ext'):].strip(' ()') or 'default'
    flops = f"{ours['gflops']:.1f}" if ours['gflops'] is not None else '-'
    comparison = result['comparison']
    return (f"| {osp.splitext(osp.basename(result['config']))[0]} | {result['shape'][0]}x{result['shape'][1]} "
            f"{result['mode']} | {ours['params_m']:.1f} | {flops} | {1000 * theirs['median_s']:.0f} | "
            f"{1000 * ours['median_s']:.0f} ({switches}) | **{comparison['speedup']:.2f}x** | "
            f"{theirs['peak_memory_mb']:.0f} / {ours['peak_memory_mb']:.0f} | {comparison['max_abs_diff']:.1e} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('results', nargs='+', help='JSON files written by tools/benchmark.py --json')
    parser.add_argument('--out', help='write the table here as well as printing it')
    args = parser.parse_args(argv)
    results = []
    for path in args.results:
        with open(path) as file:
            results.append(json.load(file))
    first = results[0]
    lines = [f"Device: {first['device']}, {first['threads']} threads, torch {first['torch']}; median of "
             f"{first['repeats']} alternating runs after {first['warmup']} warm-up; batch {first['batch']}.", '',
             '| config | input | params (M) | GFLOPs | mmseg (ms) | mmseg_ext (ms) | speed-up | '
             'peak memory MB (mmseg / ext) | max logit diff |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|']
    try:
        lines += [row(result) for result in results]
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    table = '\n'.join(lines)
    print(table)
    if args.out:
        with open(args.out, 'w') as file:
            file.write(table + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
