#!/usr/bin/env bash
# Train on one host with N GPUs: one process that sees every GPU (no jax.distributed needed).
#
#   launch/gpu.sh [--config.a.b=value ...]          # from the repo root, after pip install -e .
#
# Environment (defaults in brackets):
#   CONFIG [configs/xlnet_base.py]  WORKDIR [runs/<config name>]
#   NUM_GPUS [all visible: nvidia-smi -L, narrowed by CUDA_VISIBLE_DEVICES]
#   FSDP [1], TENSOR [1]: the mesh is data = NUM_GPUS / (FSDP * TENSOR), fsdp, tensor.
#     TENSOR must divide model.num_heads and model.d_ff; train.batch_size must be divisible by
#     data * fsdp * optim.accumulation_steps. See docs/scaling.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${CONFIG:-configs/xlnet_base.py}
WORKDIR=${WORKDIR:-runs/$(basename "$CONFIG" .py)}
if [[ -z "${NUM_GPUS:-}" ]]; then
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    NUM_GPUS=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .)
  else
    NUM_GPUS=$(nvidia-smi -L | grep -c '^GPU ')
  fi
fi
FSDP=${FSDP:-1}
TENSOR=${TENSOR:-1}
if (( NUM_GPUS % (FSDP * TENSOR) )); then
  echo "FSDP=$FSDP x TENSOR=$TENSOR does not divide NUM_GPUS=$NUM_GPUS" >&2
  exit 1
fi
DATA=$(( NUM_GPUS / (FSDP * TENSOR) ))

# NVLink multicast (NVLS) off: on shared hosts it can take the GPUs out of service.
export NCCL_NVLS_ENABLE=0

echo "mesh: data=$DATA fsdp=$FSDP tensor=$TENSOR on $NUM_GPUS GPU(s); workdir $WORKDIR"
exec python3 -m asarm_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --config.mesh.data="$DATA" --config.mesh.fsdp="$FSDP" --config.mesh.tensor="$TENSOR" "$@"
