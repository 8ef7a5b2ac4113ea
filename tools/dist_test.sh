#!/usr/bin/env bash
# Distributed testing: tools/dist_test.sh CONFIG CHECKPOINT NPROC [tools/test.py options...]
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT NPROC [tools/test.py options...]" >&2
    exit 2
fi
exec bash "$(dirname "$0")/torchrun.sh" test.py "$3" "$1" "$2" "${@:4}"
