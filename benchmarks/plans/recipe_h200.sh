#!/usr/bin/env bash
# Issue 20's recipe, measured before the headline run: the learning rate and batch size of
# xlnet_base on one H200, each run LIMIT_S seconds of training after compilation (equal
# wall-clock), same seed and data, Pallas attention, then its held-out bits/token. The winner
# is what benchmarks/plans/headline_h200.sh trains (its LR and BATCH knobs). Run it like that
# plan (see its header):
#
#   benchmarks/h100_session.sh background benchmarks/plans/recipe_h200.sh
#   benchmarks/h100_session.sh wait lr6e-4_b64                 # ..., done
#
# Stages: profile (issue 16's batch-1 call profiles, as in the headline plan), then one per run,
# named lr${LR}_b${BATCH}; RUNS/out/train_$name.log and eval_$name.json. Each schedule's STEPS
# comes from the measured ~7.1 steps/s at batch 64 (x2 at batch 32), so that it ends near the
# limit; warmup is 300 steps at batch 64, the same number of tokens at other batch sizes. A CPU dry run: MODEL=demo IMPL=xla IMPLS= LIMIT_S=20 STEPS_B64=40 MAX_FILES=600.
set -u
S=benchmarks/h100_session.sh
MODEL=${MODEL:-xlnet_base}
export IMPL=${IMPL:-pallas} LIMIT_S=${LIMIT_S:-150}
export TRAIN_S=$((LIMIT_S + 240))
STEPS_B64=${STEPS_B64:-1100}
mkdir -p "$OUT" "$RUNS/scratch"
stage() { echo "$(date +%T) $*" >> "$RUNS/stages.txt"; }

stage start
IMPLS=${IMPLS-cudnn pallas} PROFILE_CONFIG=$MODEL bash $S profile > "$OUT/profile.log" 2>&1
stage profile
CONFIG=configs/$MODEL.py bash $S prepare > "$OUT/prepare.log" 2>&1
for RECIPE in ${RECIPES:-6e-4:64 3e-4:64 1.2e-3:64 6e-4:32}; do  # 6e-4 x 64: the config's own
  LR=${RECIPE%:*} BATCH=${RECIPE#*:}
  NAME=lr${LR}_b${BATCH}
  CONFIG=configs/$MODEL.py RUN=$NAME STEPS=$((STEPS_B64 * 64 / BATCH)) \
    TRAIN_ARGS="--config.optim.learning_rate=$LR --config.train.batch_size=$BATCH
      --config.optim.warmup_steps=$((300 * 64 / BATCH))" \
    bash $S train > "$OUT/train_$NAME.log" 2>&1
  OUT=$RUNS/scratch RUN=$NAME TASKS=density bash $S evaluate > "$OUT/evaluate_$NAME.log" 2>&1
  cp "$RUNS/$NAME/eval/results.json" "$OUT/eval_$NAME.json"
  stage "$NAME"
done
stage done
