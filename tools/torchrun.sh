#!/usr/bin/env bash
# Shared by dist_train.sh and dist_test.sh: run a tools/ script in NPROC processes through torchrun.
# Usage: tools/torchrun.sh SCRIPT NPROC [script arguments...]
# One process per GPU (NCCL), or NPROC CPU processes (gloo) on a machine without CUDA.
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT as for torchrun. PYTHON picks the interpreter.
set -euo pipefail
SCRIPT=$1
NPROC=$2
PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$NPROC" \
    --master_port="${PORT:-29500}" \
    "$(dirname "$0")/$SCRIPT" "${@:3}" --launcher pytorch
