"""Assemble ``tools/analysis_tools/benchmark.py --json`` results into Markdown tables (used by ``make bench``).

Writes one table with every row (``--out``) and, with ``--family-dir``, one file per model family
(the config name up to its first ``_``: ``erfnet.md``, ``ocrnet.md``, ``segformer.md``) that the
family's documentation links to. Every figure in these files comes from the JSON results.

Rows report their achieved GMAC/s and share of their precision's roof (``mmseg_ext.benchmark.roofline``,
measured in each run). A run timed with ``--no-flops`` takes its multiply-adds from another run in the same
tables of the same config, task, input, batch and whole-image test mode (marked ``*``): the count depends on
nothing else.

Example::

    python tools/analysis_tools/benchmark_table.py work_dirs/bench/*.json --out docs/benchmark_cpu.md \\
        --family-dir docs/bench
"""
import argparse
import json
import os
import os.path as osp
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

HEADER = ('| config | task | input | allocator | variant | GFLOPs | median (ms) | n | speed-up | GMAC/s | % of roof | '
          'peak memory (MB) | memory ratio | max abs diff | first call (s) |')
RULE = '|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|'


def config_name(result: dict) -> str:
    return osp.splitext(osp.basename(result['config']))[0]


def family(result: dict) -> str:
    """The model family of a result: its config name up to the first ``_`` (``segformer-official`` counts
    as ``segformer``)."""
    return config_name(result).split('_')[0].split('-')[0]


# (config, task, input, batch) -> the FLOP counts of a run that counted them, in whole-image mode.
FlopCounts = Dict[Tuple[str, str, Tuple[int, ...], int], dict]


def _flop_key(result: dict) -> Tuple[str, str, Tuple[int, ...], int]:
    return result['config'], result['task'], tuple(result['shape']), result['batch']


def flop_counts(results: List[dict]) -> FlopCounts:
    """The FLOP counts of every whole-image run that counted them (a sliding-window count also depends on
    the crop and stride, which the results do not record)."""
    counts: FlopCounts = {}
    for result in results:
        for condition in result['conditions']:
            if condition.get('flops') and condition['mode'] == 'whole':
                counts.setdefault(_flop_key(result), condition['flops'])
    return counts


def roof_columns(result: dict, condition: dict, name: str, row: dict, counts: FlopCounts) -> Tuple[str, str, str]:
    """The GFLOPs, GMAC/s and % of roof cells of one row; a count borrowed from another run is marked ``*``."""
    gflops, rate, mark = row.get('gflops'), row.get('achieved_gmacs'), ''
    borrowed = counts.get(_flop_key(result), {}) if condition['mode'] == 'whole' else {}
    # whose count tools/analysis_tools/benchmark.py takes
    base = 'mmseg' if name.split('+')[0] == 'mmseg' else 'configured'
    if gflops is None and base in borrowed:
        gflops, mark = borrowed[base]['gflops'], '*'
        rate = gflops / row['median_s'] if result['task'] == 'inference' else None
    roof, precision = result.get('roof'), row.get('precision')
    share = rate / roof[precision]['roof'] if rate is not None and roof and precision else None
    return (f'{gflops:.1f}{mark}' if gflops is not None else '-', f'{rate:.1f}{mark}' if rate is not None else '-',
            f'{100 * share:.1f}% {precision}' if share is not None else '-')


def rows(result: dict, counts: Optional[FlopCounts] = None) -> List[str]:
    """One row per allocator condition and variant; speed-up and ratios are against the run's baseline.
    ``counts``: FLOP counts to take for rows of runs that did not count them (see :func:`flop_counts`)."""
    lines = []
    shape = f"{result['shape'][0]}x{result['shape'][1]}"
    for condition in result['conditions']:
        batch = f", batch {result['batch']}" if result['batch'] != 1 else ''
        for name, row in condition['results'].items():
            flops, rate, share = roof_columns(result, condition, name, row, counts or {})
            diff = f"{row['max_abs_diff']:.1e}" if row.get('max_abs_diff') is not None else '-'
            baseline = name == condition['baseline']
            speedup = '1.00x (baseline)' if baseline else f"**{row['speedup']:.2f}x**"
            first_call = f"{row['warmup_seconds'][0]:.1f}" if row.get('warmup_seconds') else '-'
            mode = f" {condition['mode']}" if result['task'] == 'inference' else ''
            variant = f"{name} (calibrated on {row['calibration']})" if row.get('calibration') else name
            lines.append(f"| {config_name(result)} | {result['task']} | {shape}{mode}{batch} | "
                         f"{condition['allocator']} | {variant} | {flops} | {1000 * row['median_s']:.0f} | "
                         f"{len(row['seconds'])} | {speedup} | {rate} | {share} | {row['peak_memory_mb']:.0f} | "
                         f"{row['memory_ratio']:.2f} | {diff} | {first_call} |")
    return lines


def notes(results: List[dict]) -> List[str]:
    """What the columns mean and how the figures were taken, from the results themselves."""
    first = results[0]
    threads = sorted({condition['threads'] for result in results for condition in result['conditions']})
    conventions = sorted({result.get('flop_convention', '') for result in results} - {''})
    return [
        f"Device: {first['device']}, {', '.join(map(str, threads))} threads, torch {first['torch']}; median of "
        'n timed calls per variant, the variants alternating in one process in a rotating order, after '
        'warm-up calls.', '',
        'Speed-up and memory ratio are against the first variant of the same run (`mmseg`: mmseg\'s own '
        'implementation of the network, holding the same weights). Inference times the network\'s forward '
        '(`_forward`, under `torch.inference_mode`); a train step is forward, losses, backward and the '
        'config\'s optimizer step. Peak memory is what one call adds to the process. "first call" is the '
        'first warm-up call, which includes one-time costs (for `compiled`, the compilation). Allocator '
        '`default` is glibc as it starts; `tuned` keeps freed memory instead of returning it to the system '
        '(`mmseg_ext.benchmark.allocator`).', '',
        *(f'GFLOPs of one forward: {convention}.' for convention in conventions), '',
        'GMAC/s is a row\'s multiply-adds per call (its GFLOPs) over its median time; % of roof is that rate over '
        'the roof of the row\'s precision (float32; bf16 for the `amp`, `bf16` and `openvino-bf16` steps; int8 for '
        'int8 steps) measured in the same run with its threads: the better of a matrix product and a 3x3 '
        'convolution (`mmseg_ext.benchmark.roofline`; below). Training steps have no rate: only their forward\'s '
        'multiply-adds are counted. `*`: multiply-adds counted by another run of the same config, input and '
        'batch (this one ran with `--no-flops`).', '',
        *roof_notes(results),
    ]


def roof_notes(results: List[dict]) -> List[str]:
    """A table of every run's roof, the operations and kernels it ran."""
    measured = [result for result in results if result.get('roof')]
    if not measured:
        return ['No run measured the roof (`--no-roof`).', '']
    first = measured[0]['roof']
    # The precisions and operations the roof measured (mmseg_ext.benchmark.roofline), in its order.
    precisions = [name for name, entry in first.items() if isinstance(entry, dict) and 'kernels' in entry]
    operations = list(first['operations'])
    head = ' | '.join(f'{precision} {operation}' for precision in precisions for operation in operations)
    lines = [f"Roof of each run, GMAC/s (each kernel the best of at least {first['calls']} calls and "
             f"{first.get('min_seconds', 0)} s; matmul: "
             f"{first['operations']['matmul']}, conv: {first['operations']['conv']}):", '',
             f'| config | task | input | variants | threads | {head} |',
             '|---|---|---|---|---:|' + '---:|' * (len(precisions) * len(operations))]
    for result in measured:
        roof = result['roof']
        rates = ' | '.join(f'{roof[precision][operation]:.0f}' for precision in precisions for operation in operations)
        lines.append(f"| {config_name(result)} | {result['task']} | {result['shape'][0]}x{result['shape'][1]} | "
                     f"{', '.join(result['variants'])} | {roof['threads']} | {rates} |")
    kernels = [f"- {precision}: matmul `{first[precision]['kernels']['matmul']}`, conv "
               f"`{first[precision]['kernels']['conv']}`" for precision in precisions]
    return lines + ['', 'Kernels:', '', *kernels, '']


def table(results: List[dict], title: Optional[str] = None) -> str:
    lines = ([f'# {title}', ''] if title else []) + [
        '<!-- Generated by `make bench` (tools/analysis_tools/benchmark_table.py) from '
        'tools/analysis_tools/benchmark.py results; do not edit by hand. -->', ''] + notes(results) + [HEADER, RULE]
    counts = flop_counts(results)
    for result in results:
        lines += rows(result, counts)
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('results', nargs='+', help='JSON files written by tools/analysis_tools/benchmark.py --json')
    parser.add_argument('--out', help='write the table of all results here as well as printing it')
    parser.add_argument('--family-dir', help='also write one table per model family into this folder')
    args = parser.parse_args(argv)
    results = []
    for path in args.results:
        with open(path) as file:
            result = json.load(file)
        if 'conditions' not in result:
            print(f'error: {path} is not a tools/analysis_tools/benchmark.py result of this version (no "conditions")',
                  file=sys.stderr)
            return 2
        results.append(result)
    text = table(results, title='CPU benchmark: mmseg_ext against mmseg')
    print(text, end='')
    if args.out:
        with open(args.out, 'w') as file:
            file.write(text)
    if args.family_dir:
        os.makedirs(args.family_dir, exist_ok=True)
        by_family: Dict[str, List[dict]] = defaultdict(list)
        for result in results:
            by_family[family(result)].append(result)
        for name, members in by_family.items():
            with open(osp.join(args.family_dir, f'{name}.md'), 'w') as file:
                file.write(table(members, title=f'{name}: CPU benchmark against mmseg'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
