#!/usr/bin/env bash
# Runs `python -m benchmarks "$@"` on a GPU machine, from the repository root of a checkout that
# carries the wheels of ../shared/gpu_wheels.sh in .whl: installs them once per machine, then
# puts them and the checkout on PYTHONPATH, with a compilation cache that outlives the call.
#   benchmarks/launch.sh experiment headline --runs=/tmp/runs --out="$OUT" --detach=true
#   benchmarks/launch.sh experiment headline --runs=/tmp/runs --out="$OUT" --wait=asarm
set -euo pipefail
if [ ! -e /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
    .whl/*.whl
  touch /tmp/site/.installed
fi
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/runs/jax_cache}"
exec python3 -m benchmarks "$@"
