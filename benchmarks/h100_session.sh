#!/usr/bin/env bash
# What one H100 session ran, in the repo root of a checkout carrying .whl (see
# ../shared/gpu_wheels.sh). Usage: benchmarks/h100_session.sh throughput|train_and_sample
# Results land in $OUT (default runs/out); the trained workdir in runs/xlnet_base.
set -uo pipefail
OUT=${OUT:-runs/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
quiet() { grep -v -E "Warning|warn\(|^\s*$"; }
case "$1" in
  throughput)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    python3 benchmarks/train_throughput.py --configs=code_small,xlnet_base --steps=20 \
      --out="$OUT" 2>&1 | quiet | tail -8
    ;;
  train_and_sample)
    STDLIB=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
    SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
    python3 -m asarm_jax.main --config=configs/xlnet_base.py --workdir=runs/xlnet_base \
      --config.train.num_steps="${STEPS:-1000}" --config.train.eval_every="${STEPS:-1000}" \
      --config.train.checkpoint_every="${STEPS:-1000}" --config.train.log_every=100 \
      --config.optim.warmup_steps=200 --config.objective.fraction_range="(0.01, 0.6)" \
      --config.data.source_dirs="('$STDLIB', '$SITE')" --config.data.max_files=8000 \
      --config.sample.num_examples=0 2>&1 | grep -E "\] \[|Error|error:|Resumed|seed" \
      | tee "$OUT/train.log"
    python3 benchmarks/sampling_speed.py --workdir=runs/xlnet_base --out="$OUT" --reference \
      --budget_s="${SAMPLE_S:-150}" 2>&1 | quiet | tee "$OUT/sampling.log"
    ;;
esac
