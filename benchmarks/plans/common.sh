# Shared by the plans in this folder (sourced; run from the repo root with RUNS and OUT set).
S=benchmarks/h100_session.sh
mkdir -p "$OUT" "$RUNS/scratch"

stage() {  # NAME: marks a stage done, for `h100_session.sh wait NAME`
  echo "$(date +%T) $*" >> "$RUNS/stages.txt"
}

want() {  # NAME: whether STAGES (default: all) lists stage NAME
  [[ " ${STAGES:-all} " == *" all "* || " ${STAGES:-all} " == *" $1 "* ]]
}

recipe() {  # LR BATCH: the --config overrides of that recipe; warmup is 300 steps at batch 64,
            # the same number of tokens at other batch sizes
  echo "--config.optim.learning_rate=$1 --config.train.batch_size=$2
        --config.optim.warmup_steps=$((300 * 64 / $2))"
}

evaluate() {  # LABEL: the evaluate step on RUN (TASKS, METHOD, ... from the environment);
              # its log and results.json come back as OUT/evaluate_LABEL.log, OUT/eval_LABEL.json
  OUT=$RUNS/scratch bash $S evaluate > "$OUT/evaluate_$1.log" 2>&1
  cp "$RUNS/$RUN/eval/results.json" "$OUT/eval_$1.json"
}

train_causal() {  # the causal LM of equal compute (configs/judge.py: left to right, nothing
                  # visible) on MODEL's data, with the plan's recipe, STEPS and LIMIT_S
  CONFIG=configs/judge.py:$MODEL FRACTIONS="(0.0, 0.0)" RUN=causal bash $S train \
    > "$OUT/train_causal.log" 2>&1
}

evaluate_causal() {  # its held-out bits and the prefix-only single-line tasks (sequential, T=0.2)
  RUN=causal TASKS=density,humaneval_single_line_prefix METHOD=sequential K=1 TEMP=0.2 \
    evaluate causal
}
