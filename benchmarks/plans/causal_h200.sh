#!/usr/bin/env bash
# Issue 20's causal LM of equal compute, for a headline AS-ARM trained in an earlier device
# session (benchmarks/plans/headline_h200.sh with HE_EXECUTE=0 and no causal stage): the same
# data, recipe, STEPS and LIMIT_S, trained left to right with nothing visible
# (configs/judge.py), then its held-out bits and the prefix-only single-line tasks, and, as the
# judge, the AS-ARM's generation-quality samples (SAMPLES: that session's
# gen_samples_*.npz, an absolute path in the carried checkout). Run it like the headline plan:
#
#   SAMPLES=$PWD/docs/results/RUN/gen_samples_TAG.npz LIMIT_S=... STEPS=... \
#     benchmarks/h100_session.sh background benchmarks/plans/causal_h200.sh
#   benchmarks/h100_session.sh wait causal                # then density, judged, done
#
# Stages (RUNS/stages.txt; logs and results under RUNS/out):
#   causal   LIMIT_S seconds of training after compilation
#   density  held-out bits/token at 0/5/25/50% visible; the prefix-only single-line middles
#            (sequential, T=0.2) for python -m asarm_jax.evaluation.score_middles (HE_EXECUTE=1
#            runs the tests here instead)
#   judged   judge perplexity and entropy of SAMPLES (gen_samples_TAG_judged.json and .png)
#   greedy   the single-line infilling tasks (prefix, hidden span, suffix) decoded greedily (T=0)
#            at batch 64 and at batch 1: the same middles if a row decodes alone as it does
#            among others, on the GPU in bf16 (run 3's batch-1 HumanEval passed 1.0 point more
#            than its batch-64 runs). The causal LM infills badly, but the sampler and masks are
#            the AS-ARM's, which is what the check is about; benchmarks/compare_middles.py
#            counts the identical middles
#   overhead where a batch-1 infilling task's time goes beyond its network calls
#            (benchmarks/task_overhead.py on the causal LM: the same architecture and sampler)
#   done     (after packing the middles)
# STAGES (default all) lists the optional ones to run: judged, greedy, overhead.
# Estimated device time (H200) at LIMIT_S=1050 STEPS=7650 (run 3's AS-ARM: the same tokens):
# the machine's start ~90 s, prepare ~45 s, training ~1150 s with startup, the stages after it
# ~4 minutes: about 1500 s of the session's 1800.
# A CPU dry run: MODEL=demo IMPL=xla LIMIT_S=20 STEPS=40 BATCH=8 HE_MAX_TASKS=12 MAX_FILES=200
# with SAMPLES from a dry run of the headline plan on the same MODEL and MAX_FILES.
set -u
source benchmarks/plans/common.sh
MODEL=${MODEL:-xlnet_base}
export IMPL=${IMPL:-pallas} LIMIT_S=${LIMIT_S:-300} STEPS=${STEPS:-2200}
export TRAIN_ARGS=$(recipe "${LR:-1.2e-3}" "${BATCH:-64}") TRAIN_S=$((LIMIT_S + 240))
export EXECUTE=${HE_EXECUTE:-0}
if want judged; then  # copied at once: the carried tree goes away
  mkdir -p "$RUNS/samples" && cp "$SAMPLES" "$RUNS/samples/"
  SAMPLES=$RUNS/samples/$(basename "$SAMPLES")
fi

stage start
CONFIG=configs/$MODEL.py bash $S prepare > "$OUT/prepare.log" 2>&1
train_causal
stage causal
evaluate_causal
stage density
if want judged; then
  python3 -m asarm_jax.evaluation.judge_samples --judge="$RUNS/causal" "$SAMPLES" \
    > "$OUT/judge_samples.log" 2>&1
  cp "${SAMPLES%.npz}_judged.json" "${SAMPLES%.npz}_judged.png" "$OUT/"
  stage judged
fi
if want greedy; then
  for BATCH_SIZE in 64 1; do
    RUN=causal KIND=humaneval_single_line TEMP=0 METHODS=sequential:1,tree:8 \
      HE_BATCH=$BATCH_SIZE bash $S humaneval > /dev/null 2>&1
  done
  stage greedy
fi
if want overhead; then
  python3 benchmarks/task_overhead.py --workdir="$RUNS/causal" --out="$OUT" --trace \
    > "$OUT/task_overhead.log" 2>&1
  stage overhead
fi
(cd "$RUNS" && shopt -s nullglob && tar -czf "$OUT/eval_files.tgz" causal/eval/*_middles.json \
  causal/eval/*_scores.jsonl)
stage done
