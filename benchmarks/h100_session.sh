#!/usr/bin/env bash
# The headline run on one H100, as steps of at most 10 minutes on one warm machine (see
# docs/results.md). Run from the repo root of a checkout carrying .whl (../shared/gpu_wheels.sh).
#
#   benchmarks/h100_session.sh setup        # installs the carried wheels (every step does, once)
#   benchmarks/h100_session.sh checks       # the attention kernel's tests on the GPU, the cost of one
#                                           # sampling call (pallas, cudnn) against the floor, and
#                                           # the xlnet arch against HF XLNet at base size
#   benchmarks/h100_session.sh throughput   # cudnn vs pallas attention: speed + gradient agreement
#   benchmarks/h100_session.sh prepare      # dataset + tokenizer of runs/xlnet_base
#   benchmarks/h100_session.sh train        # xlnet_base for STEPS steps (default: what the measured
#                                           # throughput allows in TRAIN_S), SIGTERM at TRAIN_S;
#                                           # TRAIN_ARGS adds --config.* overrides
#   benchmarks/h100_session.sh judge        # the left-to-right judge, same data dir
#   benchmarks/h100_session.sh sampling     # sampling speed of every method and tree size, side
#                                           # by side (SAMPLE_S), and the table of method="auto"
#   benchmarks/h100_session.sh humaneval    # HumanEval KIND (single-line) at TEMP (0.2) for each
#                                           # METHODS entry (method:k or tree:N:D, default
#                                           # sequential:1,tree:8; D is 6 unless given),
#                                           # generation timed after a compiling warm-up batch;
#                                           # rows of HE_BATCH (64) per sampler call, into
#                                           # OUT/KIND_tTEMP_bHE_BATCH.json;
#                                           # HE_MAX_TASKS subsamples (0: all); EXECUTE=0
#                                           # (here and in evaluate) writes the middles
#                                           # (eval/*_middles.json) for score_middles on a
#                                           # CPU instead of running the tests
#   benchmarks/h100_session.sh evaluate     # TASKS (HumanEval single/multi-line, gen quality,
#                                           # density, ...) decoded by METHOD:K at TEMP
#   benchmarks/h100_session.sh call_cost    # the sampling-call cost of each IMPLS entry (default
#                                           # pallas) against the floor (part of checks)
#   benchmarks/h100_session.sh profile      # where a sampling call's time goes (PROFILE_CALLS,
#                                           # batch:rows, default 1:1,1:36), per IMPLS entry
#   benchmarks/h100_session.sh sweep        # for each W of WEIGHTS: train run draftW$TAG
#                                           # (draft_weight W; LIMIT_S seconds of training each,
#                                           # compilation excluded: equal wall-clock), then its
#                                           # density and draft acceptance; logs and results into
#                                           # OUT as it goes
#   benchmarks/h100_session.sh tokens_per_call  # assd, assd_fused, tree on each of RUN_LIST
#
#   benchmarks/h100_session.sh background STEP   # STEP detached (setsid), logging to runs/STEP.log;
#                                                # STEP may be a plan file (benchmarks/plans/*.sh)
#   benchmarks/h100_session.sh wait STAGE        # until a plan logs STAGE (or WAIT_S, 540 s), then
#                                                # OUT/progress.tgz: everything the plan wrote so far
#
# RUN (default xlnet_base) names the workdir under RUNS of train, sampling, humaneval and evaluate,
# so several models can share the prepared data (e.g. a sweep of objective.draft_weight). The
# causal LM of equal compute: CONFIG=configs/judge.py:xlnet_base FRACTIONS="(0.0, 0.0)" RUN=causal.
#
# `train` and `judge` run in the background while later calls keep the machine warm; each stops
# itself (SIGTERM -> checkpoint) at its time limit and resumes when run again.
# IMPL=auto picks the attention implementation from the throughput step's JSON.
#
# Durations measured on the H200 (2026-12-02), to plan 10-minute calls: checks about 9.5 min
# (the kernel tests alone 92 s); call_cost about 60 s per implementation; prepare about 45 s
# (20,000 files, run in the background beside checks); train reaches step 100 about 110 s after
# it starts (startup and compilation), then about 230k tokens/s with the draft term (255k
# without); startup falls to ~26 s once the compilation cache holds the program, which is why
# LIMIT_S (train.time_limit_s) rather than TRAIN_S sets equal training time; evaluate with
# TASKS=density,draft_acceptance about 20 s; tokens_per_call on three workdirs about 95 s.
# A call that runs past its limit is killed with every process it started, `background` steps
# included (a run lost that way left no checkpoint). At most 8 files of OUT come back, so `wait`
# packs a plan's outputs into one archive. Each device call replaces the carried tree (a call
# that carries nothing removes it), so `background` runs from a copy under RUNS: a detached job
# that ran from the carried tree lost its scripts mid-plan. Wait for a step by its log line or
# stage, never with `pgrep -f PATTERN`, which matches the waiting command's own command line.
set -uo pipefail
OUT=${OUT:-runs/out}
RUNS=${RUNS:-runs}
RUN=${RUN:-xlnet_base}  # the workdir under RUNS of train, sampling, humaneval and evaluate
mkdir -p "$OUT" "$RUNS"
if [ ! -e /tmp/site/.installed ]; then  # once per machine
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
    .whl/*.whl && touch /tmp/site/.installed || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# Compiled programs persist across the steps of one machine: a resumed train step, and the same
# sampler compiled for several workdirs, skip recompilation (device time is the scarce budget).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$RUNS/jax_cache}
quiet() { grep -v -E "Warning|warn\(|^\s*$"; }
STDLIB=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])')
DATA=(--config.data.source_dirs="('$STDLIB', '$SITE')" --config.data.max_files="${MAX_FILES:-20000}"
      --config.data.data_dir="$RUNS/xlnet_base/data")

impl() {  # the faster attention implementation whose gradients agree with float32 XLA
  [ "${IMPL:-auto}" != auto ] && { echo "$IMPL"; return; }
  python3 - "$RUNS/throughput/train_throughput.json" <<'EOF'
import json, sys
rows = {r["attention"]: r for r in json.load(open(sys.argv[1])) if r["config"] == "xlnet_base"}
floor = min(r["agreement"]["grad_relative_error"] for r in rows.values())  # bf16's noise
ok = [r for r in rows.values() if r["agreement"]["grad_relative_error"] <= 1.5 * floor]
print(max(ok, key=lambda r: r["tokens_per_s"])["attention"])
EOF
}

default_steps() {  # 78% of what the measured throughput gives in TRAIN_S minus ~100 s of startup
  python3 - "$RUNS/throughput/train_throughput.json" "$1" "$TRAIN_S" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
rate = [r for r in rows if r["config"] == "xlnet_base" and r["attention"] == sys.argv[2]][0]
steps = 0.78 * (float(sys.argv[3]) - 100) * rate["tokens_per_s"] / (64 * 512)
print(int(steps) // 100 * 100)
EOF
}

case "$1" in
  setup) ;;
  background)  # from a copy of the checkout, with absolute paths, detached from this call; its
                # PYTHONPATH names the copy (the carried tree goes away: a script run by path
                # lost `import asarm_jax` once a later call carried nothing)
    RUNS=$(realpath "$RUNS"); CODE="$RUNS/code"; LOG="$RUNS/$(basename "$2" .sh).log"
    rm -rf "$CODE" && mkdir -p "$CODE" && cp -r asarm_jax benchmarks configs launch tests setup.py "$CODE"/
    [ -f "$2" ] && JOB=(bash "$2") || JOB=(bash benchmarks/h100_session.sh "$2")
    (cd "$CODE" && RUNS="$RUNS" OUT="$RUNS/out" PYTHONPATH="/tmp/site:$CODE" setsid nohup "${JOB[@]}" > "$LOG" 2>&1 < /dev/null &)
    echo "started $2 in the background from $CODE: $LOG"
    ;;
  wait)
    for _ in $(seq "${WAIT_S:-540}"); do
      grep -qs " $2\$" "$RUNS/stages.txt" && break; sleep 1
    done
    cat "$RUNS/stages.txt"
    tar -czf "$OUT/progress.tgz" -C "$RUNS" out stages.txt
    ;;
  checks)
    JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m pytest -q -p no:cacheprovider -o addopts="" \
      tests/test_attention.py 2>&1 | tail -3 | tee "$OUT/test_attention.log"
    IMPLS="pallas cudnn" bash "$0" call_cost
    OUT_ABS=$(realpath "$OUT")
    (cd tests/fixtures && python3 compare_hf_xlnet_base.py "$OUT_ABS/hf_xlnet_base.json") \
      2>&1 | quiet | grep -v "^ \|^{\|^}" | tail -12
    ;;
  call_cost)
    for IMPL in ${IMPLS:-pallas}; do
      python3 benchmarks/call_cost.py --attention_impl="$IMPL" --out="$OUT/call_cost_$IMPL" 2>&1 \
        | quiet | grep -E "^batch|^\|"
    done
    ;;
  profile)
    for IMPL in ${IMPLS-pallas}; do  # IMPLS= (set, empty) profiles nothing
      python3 benchmarks/profile_step.py --config="${PROFILE_CONFIG:-xlnet_base}" \
        --attention_impl="$IMPL" --train_step=false \
        --calls="${PROFILE_CALLS:-1:1,1:36}" --out="$OUT/profile_$IMPL" 2>&1 | quiet \
        | grep -E "^\||^###"
    done
    ;;
  sweep)
    for W in ${WEIGHTS:?}; do
      R=draft$W${TAG:-}
      RUN=$R TRAIN_ARGS="--config.objective.draft_weight=$W ${TRAIN_ARGS:-}" bash "$0" train \
        > "$OUT/train_$R.log" 2>&1
      tail -2 "$OUT/train_$R.log"
      # Two files per run come back (a call returns at most 8): its train log and its results.
      OUT=$RUNS/scratch RUN=$R TASKS=density,draft_acceptance bash "$0" evaluate \
        > "$RUNS/eval_$R.log" 2>&1
      cp "$RUNS/$R/eval/results.json" "$OUT/eval_$R.json" && echo "$R evaluated" \
        || tail -5 "$RUNS/eval_$R.log"
    done
    ;;
  tokens_per_call)
    python3 benchmarks/tokens_per_call.py --workdirs="$(printf "$RUNS/%s," ${RUN_LIST} | sed 's/,$//')" \
      --out="$OUT" 2>&1 | quiet | grep "^|" | tee "$OUT/tokens_per_call.md"
    ;;
  throughput)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    python3 benchmarks/train_throughput.py --configs=xlnet_base --attention_impls=cudnn,pallas \
      --steps=20 --out="$RUNS/throughput" 2>&1 | quiet | tail -8
    cp "$RUNS/throughput/train_throughput.json" "$OUT/"
    ;;
  prepare)
    python3 launch/prepare_data.py --config="${CONFIG:-configs/xlnet_base.py}" \
      --workdir="$RUNS/xlnet_base" \
      "${DATA[@]}" 2>&1 | quiet | tail -3
    ;;
  train)
    IMPL=$(impl); STEPS=${STEPS:-$(default_steps "$IMPL")}
    echo "attention: $IMPL, steps: $STEPS, time limit: ${TRAIN_S}s"
    XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.62} timeout -s TERM "$TRAIN_S" \
      python3 -m asarm_jax.main --config="${CONFIG:-configs/xlnet_base.py}" --workdir="$RUNS/$RUN" \
      "${DATA[@]}" --config.model.attention_impl="$IMPL" --config.train.num_steps="$STEPS" \
      --config.train.eval_every="$STEPS" --config.train.checkpoint_every=1000 \
      --config.train.log_every=100 --config.optim.warmup_steps=300 \
      --config.objective.fraction_range="${FRACTIONS:-(0.01, 0.6)}" --config.sample.num_examples=0 \
      ${LIMIT_S:+--config.train.time_limit_s=$LIMIT_S} ${TRAIN_ARGS:-} 2>&1 \
      | grep --line-buffered -E "\[train\]|\[heldout\]|Error|error:|Resumed|seed|Stopp|signal|saved|done:|time_limit"
    ;;
  judge)
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.28 timeout -s TERM "$JUDGE_S" \
      python3 -m asarm_jax.main --config=configs/judge.py:xlnet_base \
      --workdir="$RUNS/judge" "${DATA[@]}" --config.model.attention_impl="$(impl)" \
      --config.model.num_layers=6 --config.model.d_model=512 --config.model.num_heads=8 \
      --config.model.d_ff=2048 \
      --config.train.num_steps="${JUDGE_STEPS:-3000}" --config.train.eval_every="${JUDGE_STEPS:-3000}" \
      --config.train.checkpoint_every=1000 --config.train.log_every=250 \
      --config.optim.warmup_steps=200 2>&1 \
      | grep --line-buffered -E "\[train\]|\[heldout\]|Error|error:|Resumed|Stopp|signal|saved|done:"
    ;;
  sampling)
    python3 benchmarks/sampling_speed.py --workdir="$RUNS/$RUN" --out="$OUT" --reference \
      --budget_s="${SAMPLE_S:-150}" --auto_table="$OUT/auto_table.json" 2>&1 | quiet \
      | tee "$OUT/sampling.log"
    ;;
  humaneval)
    python3 - "$RUNS/$RUN" "${METHODS:-sequential:1,tree:8}" "${TEMP:-0.2}" "$OUT" \
      "${KIND:-humaneval_single_line}" "${HE_MAX_TASKS:-0}" "${EXECUTE:-1}" "${HE_BATCH:-64}" \
      <<'EOF' 2>&1 | quiet | grep -v "it/s\]$" \
      | tee "$OUT/${KIND:-humaneval_single_line}_t${TEMP:-0.2}_b${HE_BATCH:-64}.log"
import json, os, sys, time
from asarm_jax import inference
from asarm_jax.evaluation import infill_model, runner
from asarm_jax.evaluation.config import default_eval_config
workdir, methods, temperature, out, kind, max_tasks, execute, batch = sys.argv[1:]
temperature, max_tasks, batch = float(temperature), int(max_tasks), int(batch)
config = inference.load(workdir).config
report, seconds, complete = {}, [], infill_model.complete
def timed(model, params, tokenizer, tasks, path, **kwargs):  # generation wall-clock only
  start = time.perf_counter()  # first, compile on one batch of tasks, into a throwaway cache
  complete(model, params, tokenizer, tasks[:kwargs["batch_size"]], path + ".warmup", **kwargs)
  os.remove(path + ".warmup")
  warmup = time.perf_counter() - start
  start = time.perf_counter()
  done = complete(model, params, tokenizer, tasks, path, **kwargs)
  seconds.append((warmup, time.perf_counter() - start))
  return done
infill_model.complete = timed
for spec in methods.split(","):  # METHOD:K, or tree:N:D for a tree of depth D (default 6)
  method, k, *depth = spec.split(":")
  if len(depth) > (method == "tree"):
    sys.exit(f"bad METHODS entry {spec!r}: METHOD:K, or tree:N:D")
  config.eval = default_eval_config()
  config.eval.update(tasks=(kind,), method=method, k=int(k), temperature=temperature,
                     batch_size=batch, sandbox_workers=14, humaneval_max_tasks=max_tasks,
                     humaneval_execute=execute == "1")
  if depth:
    config.eval.tree_depth = int(depth[0])
  report[spec] = runner.run(config, workdir)["tasks"][kind]
  report[spec]["warmup_s"], report[spec]["generation_s"] = seconds[-1]
  json.dump(report, open(f"{out}/{kind}_t{temperature:g}_b{batch}.json", "w"), indent=1)
EOF
    ;;
  evaluate)
    # METHOD:K at TEMP decodes the infilling tasks; JUDGE (a workdir under RUNS) scores gen_quality,
    # or GEN_SAMPLES_ONLY=1 only writes its samples (eval/gen_samples_*.npz, for judge_samples).
    python3 - "$RUNS" "$RUN" \
      "${TASKS:-density,draft_acceptance,humaneval_single_line,humaneval_multi_line,gen_quality}" \
      "${METHOD:-assd_fused}" "${K:-5}" "${TEMP:-1}" "${JUDGE:-judge}" \
      "${GEN_METHODS:-sequential,assd,assd_fused,parallel}" "${HE_MAX_TASKS:-0}" "${EXECUTE:-1}" \
      "${GEN_SAMPLES_ONLY:-0}" <<'EOF' 2>&1 | quiet | grep -v "it/s\]$" | tee "$OUT/evaluate.log"
import sys
from asarm_jax import inference
from asarm_jax.evaluation import runner
from asarm_jax.evaluation.config import default_eval_config
(runs, run, tasks, method, k, temperature, judge, gen_methods, max_tasks, execute,
 samples_only) = sys.argv[1:]
config = inference.load(f"{runs}/{run}").config
config.eval = default_eval_config()
config.eval.update(tasks=tuple(tasks.split(",")), method=method, k=int(k),
                   temperature=float(temperature), batch_size=64, sandbox_workers=14,
                   judge_workdir=f"{runs}/{judge}", gen_num_prompts=64,
                   gen_methods=tuple(gen_methods.split(",")), humaneval_max_tasks=int(max_tasks),
                   humaneval_execute=execute == "1", gen_samples_only=samples_only == "1")
runner.run(config, f"{runs}/{run}")
EOF
    tar -czf "$OUT/eval_$RUN.tar.gz" -C "$RUNS/$RUN" eval
    ;;
  *) echo "unknown step $1"; exit 2 ;;
esac
