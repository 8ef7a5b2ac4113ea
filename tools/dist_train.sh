#!/usr/bin/env bash
# Distributed training: tools/dist_train.sh CONFIG NPROC [tools/train.py options...]
# NCCL on GPUs, gloo CPU processes without CUDA; NNODES, NODE_RANK, MASTER_ADDR, PORT for several nodes.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG NPROC [tools/train.py options...]" >&2
    exit 2
fi
exec bash "$(dirname "$0")/torchrun.sh" train.py "$2" "$1" "${@:3}"
