"""Convert a published checkpoint into an mmengine checkpoint for this plugin's models.

The layout is detected from the keys (after removing wrapper prefixes such as ``module.``); every
family's converter registers itself in :mod:`mmseg_ext.converters`. The last line printed is the
repository config to use with the written checkpoint::

    python tools/model_converters/convert_checkpoint.py erfnet_pretrained.pth checkpoints/erfnet_authors.pth
    python tools/test.py "$(python tools/model_converters/convert_checkpoint.py SRC DST | tail -n 1)" DST

Before writing, the converted tensors are checked against the model the printed config (with the
``--cfg-options`` the notes name) builds (:mod:`mmseg_ext.checkpoint.weights_check`), so the written file loads
strictly where it is meant to.

Exit status: 0 on success, 2 for a missing, unreadable (not a checkpoint, damaged, unsafe) source, a
checkpoint in no known layout, or converted weights that do not fit the config's model.
"""
import argparse
import os
import os.path as osp
import pickle
import sys
from datetime import datetime, timezone
from typing import Dict, List, Mapping, Optional

import torch

import mmseg_ext
from mmseg_ext.builder import build_segmentor
from mmseg_ext.checkpoint.reading import check_hf_source_config, read_checkpoint, strip_prefixes, unwrap_state_dict
from mmseg_ext.checkpoint.weights_check import WeightsMismatchError, check_weights
from mmseg_ext.converters import (CheckpointConverter, ConversionResult, config_file, detect_converter,
                                  registered_converters)


class ConversionError(Exception):
    """A problem with the source checkpoint, reported to the user without a traceback."""


def read_source(source: str) -> Dict[str, torch.Tensor]:
    """The tensors of ``source`` keyed by name, unwrapped from ``state_dict``/``model`` entries.

    Reads safely (``torch.load(weights_only=True)`` for ``.pth`` files); see
    :func:`mmseg_ext.checkpoint.reading.read_checkpoint` for the formats understood.
    """
    if not osp.exists(source):
        raise ConversionError(f'source checkpoint not found: {source}')
    try:
        check_hf_source_config(source)  # a Hugging Face config.json the repository configs cannot build
        checkpoint = read_checkpoint(source, map_location='cpu')
        state_dict = unwrap_state_dict(checkpoint)
    # unreadable; not a checkpoint, damaged or unsafe (mmseg_ext.checkpoint.safe_unpickler.CheckpointFileError is
    # a ValueError)
    except (OSError, RuntimeError, TypeError, ValueError, pickle.UnpicklingError) as error:
        raise ConversionError(f'cannot read {source}: {error}') from None
    tensors = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ConversionError(f'{source} holds no tensors (top-level keys: {", ".join(map(str, state_dict))})')
    return tensors


def explain_unknown_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A message listing every known layout and, where the converter says, which keys mismatched."""
    lines = ['the checkpoint fits none of the known layouts '
             f'(it has {len(state_dict)} tensors; first keys: {", ".join(sorted(state_dict)[:5])}).',
             'Known layouts:']
    for converter in registered_converters().values():
        lines.append(f'  {converter.name}: {converter.description}')
        for problem in converter.mismatches(state_dict):
            lines.append(f'      {problem}')
    return '\n'.join(lines)


def choose_converter(state_dict: Mapping[str, torch.Tensor]) -> CheckpointConverter:
    """The one converter whose layout ``state_dict`` is in."""
    if not any(converter.matches(state_dict) for converter in registered_converters().values()):
        raise ConversionError(explain_unknown_layout(state_dict))
    try:
        return detect_converter(state_dict)
    except ValueError as error:  # several layouts matched
        raise ConversionError(str(error)) from None


def check_fits_config(result: ConversionResult) -> None:
    """Build the model of ``result.config`` (with ``result.cfg_options``) and check the converted tensors fit
    it exactly; a mismatch means the converter and the config disagree."""
    from mmengine.config import DictAction
    cfg_options = None
    if result.cfg_options:
        parser = argparse.ArgumentParser()
        parser.add_argument('--cfg-options', nargs='+', action=DictAction)
        cfg_options = parser.parse_args(['--cfg-options', *result.cfg_options]).cfg_options
    model = build_segmentor(config_file(result.config), cfg_options)  # nothing is downloaded
    try:
        check_weights(model, result.state_dict, f'the converted checkpoint (for {result.config})', partial_flag=None)
    except WeightsMismatchError as error:
        raise ConversionError(str(error)) from None


def save_checkpoint(result: ConversionResult, converter: CheckpointConverter, source: str,
                    destination: str) -> None:
    """Write ``{'meta': ..., 'state_dict': ...}`` as mmengine's runner does."""
    meta = dict(converted_from=osp.abspath(source), converter=converter.name, config=result.config,
                mmseg_ext_version=mmseg_ext.__version__,
                time=datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))
    directory = osp.dirname(osp.abspath(destination))
    os.makedirs(directory, exist_ok=True)
    torch.save({'meta': meta, 'state_dict': result.state_dict}, destination)


def convert(source: str, destination: str) -> ConversionResult:
    """Read, detect, convert and save; returns the converter's result."""
    state_dict = strip_prefixes(read_source(source))
    converter = choose_converter(state_dict)
    try:
        result = converter.convert(state_dict)
    except ValueError as error:
        raise ConversionError(f'{converter.name}: {error}') from None
    check_fits_config(result)
    save_checkpoint(result, converter, source, destination)
    print(f'detected layout: {converter.name}')
    print(f'wrote {destination} ({len(result.state_dict)} tensors)')
    for note in result.notes:
        print(f'note: {note}')
    print(result.config)
    return result


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog='Known layouts: ' + ', '.join(registered_converters()))
    parser.add_argument('src', help='published checkpoint (.pth file, or a format a converter family adds)')
    parser.add_argument('dst', help='where to write the converted mmengine checkpoint (.pth)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        convert(args.src, args.dst)
    except ConversionError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
