#!/usr/bin/env bash
# Build the mmcv wheel (with its CPU/CUDA ops) once per machine, in a throwaway build environment.
#
# PyPI has mmcv 2.1.0 only as a source distribution. Its setup.py imports pkg_resources, so it needs
# setuptools<70 at build time, while torch 2.13 wants setuptools>=77 at run time. Building the wheel in a
# separate environment keeps the runtime environment consistent (`pip check` stays clean), and the wheel
# is kept in WHEEL_DIR, outside the repository, so every clone on the same machine reuses it.
# The compiler's progress ([done/total] and the source file) is printed as it goes; the full log is
# kept in WHEEL_DIR/mmcv-build.log.
#
# Usage: tools/misc/build_mmcv_wheel.sh WHEEL_DIR BUILD_ENV TORCH_PIN MMCV_PIN
set -euo pipefail
wheel_dir=$1 build_env=$2 torch_pin=$3 mmcv_pin=$4
mmcv_version=${mmcv_pin#mmcv==}

if ls "$wheel_dir"/mmcv-"$mmcv_version"-*.whl >/dev/null 2>&1; then
    echo "[mmcv] using cached wheel: $(ls "$wheel_dir"/mmcv-"$mmcv_version"-*.whl)"
    exit 0
fi
mkdir -p "$wheel_dir"
echo "[mmcv] building $mmcv_pin from source: about 6 minutes on 2 idle cores, once per machine"
if [ ! -x "$build_env/bin/python" ]; then
    python3 -m venv "$build_env"
fi
py="$build_env/bin/python"
"$py" -m pip install -q "$torch_pin" wheel ninja numpy
# torch declares setuptools>=77; this environment only builds, so the older setuptools is forced in after it.
"$py" -m pip install -q "setuptools<70" 2>&1 | grep -v 'dependency conflicts\|requires setuptools' || true

src_root=$(mktemp -d)
trap 'rm -rf "$src_root"' EXIT
"$py" -m pip download -q --no-deps --no-binary :all: -d "$src_root" "$mmcv_pin"
tar -xzf "$src_root"/mmcv-"$mmcv_version".tar.gz -C "$src_root"
log="$wheel_dir/mmcv-build.log"
echo "[mmcv] compiling (full log: $log)"
(
    cd "$src_root/mmcv-$mmcv_version"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$py" setup.py bdist_wheel -d "$wheel_dir" 2>&1
) | tee "$log" | sed -nu -E 's#^\[([0-9]+/[0-9]+)\].* -c ([^ ]*/)?([^ /]+\.(cpp|cu)) .*#[mmcv] [\1] \3#p'
if ! ls "$wheel_dir"/mmcv-"$mmcv_version"-*.whl >/dev/null 2>&1; then
    echo "[mmcv] build failed, no wheel in $wheel_dir; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
fi
echo "[mmcv] wheel ready: $(ls "$wheel_dir"/mmcv-"$mmcv_version"-*.whl)"
