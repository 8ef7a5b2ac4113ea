#!/usr/bin/env bash
# Builds the mmseg_ext wheel from this checkout and checks that, installed elsewhere, it works without the
# checkout: the models register in mmseg's registry, every shipped config loads by its `mmseg_ext::` name, a
# config inheriting a shipped one trains (`_base_ = ['mmseg_ext::_demo_/erfnet.py']`), a Hugging Face SegFormer
# checkpoint converts, and the converted model exports to ONNX with the config the converter names.
#
#   tools/misc/check_wheel.sh [PYTHON]      (`make wheel-check`; PYTHON defaults to .venv/bin/python)
#
# The wheel is built from the files a clean clone has (tracked files and new ones git does not ignore). It is
# installed with --no-deps into a throwaway virtual environment that sees PYTHON's installed packages (torch,
# mmcv, mmseg, onnx, onnxruntime, transformers) through a .pth file; everything runs from a temporary folder
# with PYTHONPATH unset. Exit status 0 when every check passes.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${1:-$REPO/.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mmseg_ext_wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
say() { echo "[wheel-check] $*"; }

say "copying the checkout's files to $WORK/src"
mkdir -p "$WORK/src"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' path; do [[ -e $path || -L $path ]] && printf '%s\0' "$path"; done \
    | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"

say "building the wheel"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheel" "$WORK/src" >/dev/null
WHEEL=$(ls "$WORK"/wheel/mmseg_ext-*.whl)
say "built $(basename "$WHEEL")"

say "installing it into a fresh environment ($WORK/venv) that sees $PY's packages"
"$PY" -m venv --without-pip "$WORK/venv"
VPY=$WORK/venv/bin/python
"$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
    > "$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/installed_stack.pth"
"$VPY" -m pip install -q --no-deps --no-index "$WHEEL"

mkdir -p "$WORK/run"
cd "$WORK/run"
export CHECK_REPO=$REPO CHECK_VENV=$WORK/venv
unset PYTHONPATH
"$VPY" - <<'EOF'
import os
import os.path as osp
import re
import subprocess
import sys
from pathlib import Path

import mmseg_ext
from mmengine.hub import get_config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

REPO, VENV = os.environ['CHECK_REPO'], os.environ['CHECK_VENV']
PACKAGE = Path(mmseg_ext.__file__).resolve().parent
TOOLS = PACKAGE / '.mim' / 'tools'


def check(ok: bool, message: str) -> None:
    if not ok:
        sys.exit(f'[wheel-check] FAILED: {message}')
    print(f'[wheel-check] ok: {message}', flush=True)


def tool(name: str) -> str:
    found = sorted(TOOLS.rglob(name))
    if len(found) != 1:
        check(False, f'the wheel ships one {name} under .mim/tools, found {[str(p) for p in found]}')
    return str(found[0])


def run(*command: str) -> str:
    proc = subprocess.run([sys.executable, *command], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f'[wheel-check] FAILED ({proc.returncode}): {" ".join(command)}\n{proc.stdout}{proc.stderr}')
    return proc.stdout


# The stack's site-packages may lie inside the checkout (its .venv); the checkout's own root must not be on the path.
check(str(PACKAGE).startswith(VENV) and not any(p and Path(p).resolve() == Path(REPO).resolve() for p in sys.path),
      f'mmseg_ext {mmseg_ext.__version__} imported from {PACKAGE}, the checkout {REPO} not on sys.path')

init_default_scope('mmseg')
erfnet = MODELS.build(dict(type='mmseg_ext.ERFNet'))
check(type(erfnet).__module__.startswith('mmseg_ext.models'), "mmseg's MODELS builds mmseg_ext.ERFNet")

configs = sorted(p.relative_to(PACKAGE / '.mim' / 'configs').as_posix()
                 for p in (PACKAGE / '.mim' / 'configs').rglob('*.py'))
for name in configs:
    get_config(f'mmseg_ext::{name}')
check(len(configs) > 0, f'all {len(configs)} shipped configs load as mmseg_ext::NAME (mmengine.hub.get_config)')

run(tool('make_demo_data.py'), 'demo_data', '--train', '2', '--val', '1', '--height', '64', '--width', '128')
Path('my_erfnet.py').write_text('''_base_ = ['mmseg_ext::_demo_/erfnet.py']
train_dataloader = dict(batch_size=2, dataset=dict(data_root='demo_data'))
val_dataloader = dict(dataset=dict(data_root='demo_data'))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
''')
run(tool('train.py'), 'my_erfnet.py', '--work-dir', 'work_dir')
check(osp.isfile('work_dir/iter_2.pth'),
      "a config inheriting mmseg_ext::_demo_/erfnet.py trains and validates with the shipped tools/train.py")

from transformers import SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402 (after the cheap checks)
SegformerForSemanticSegmentation(SegformerConfig(num_labels=19)).save_pretrained('hf_segformer_b0')
printed = run(tool('convert_checkpoint.py'), 'hf_segformer_b0', 'segformer_b0.pth').strip().splitlines()
config = printed[-1]
check(osp.isfile('segformer_b0.pth') and config.startswith('mmseg_ext::'),
      f'a Hugging Face SegFormer-B0 converts with the shipped convert_checkpoint.py; it names {config}')

out = run(tool('export_onnx.py'), config, 'segformer_b0.pth', '--out', 'segformer_b0.onnx', '--shape', '64', '128')
relative = re.search(r'against PyTorch: .*relative ([0-9.e+-]+)', out)
check(osp.isfile('segformer_b0.onnx') and relative is not None and float(relative.group(1)) < 1e-4,
      f'the converted model exports to ONNX with the shipped export_onnx.py; ONNX Runtime agrees with PyTorch:\n'
      f'{out.strip()}')

run(tool('plot_results.py'), '--work-dirs', 'work_dir', '--out', 'chart.svg')
check(osp.getsize('chart.svg') > 0, 'the shipped plot_results.py charts the published figures it ships with')

# The converted config's Cityscapes images are absent here: int8 calibrates on the package's demo scenes.
out = run(tool('benchmark.py'), config, 'segformer_b0.pth', '--variants', 'onnxruntime', 'onnxruntime-int8',
          '--shape', '64', '128', '--mode', 'whole', '--repeats', '1', '--warmup', '0', '--no-flops', '--no-roof')
check('demo scenes' in out and 'onnxruntime-int8' in out,
      f'the shipped benchmark.py quantises it to int8, calibrated on the packaged demo scenes:\n{out.strip()}')
EOF
say "passed"
