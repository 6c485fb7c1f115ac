#!/usr/bin/env bash
# Issue 20's recipe, measured before the headline run, and issue 15's follow-up, on one H200 in
# one device session. Every run trains LIMIT_S seconds after compilation (equal wall-clock),
# same seed and data, Pallas attention, then its held-out bits/token are measured. Run it like
# benchmarks/plans/headline_h200.sh (see its header):
#
#   benchmarks/h100_session.sh background benchmarks/plans/recipe_h200.sh
#   benchmarks/h100_session.sh wait lr3e-4_b64                 # ..., done
#
# Stages, with RUNS/out/train_$name.log and eval_$name.json per run:
#   profile            issue 16's batch-1 call profiles, cuDNN + dense bias and Pallas
#   lr${LR}_b${BATCH}  one per RECIPES entry (default 1.2e-3:64 8.5e-4:32 1.7e-3:128: the
#                      batch, still owed to issue 20, with the learning rate scaled by the
#                      square root of the batch from the winner at 64, run again as the control)
#   late_draft         LATE_RECIPE (LR:BATCH, default the headline's 1.2e-3:64) twice, sharing
#                      its first LIMIT_S - LATE_S seconds: late_base goes on with the joint loss
#                      alone, late_draft adds the draft term (draft_weight 0.25) for the last
#                      LATE_S (30) seconds; both get density and draft acceptance, then tokens
#                      per call (TOKENS_PER_CALL=0 skips it, about 90 s; LATE_DRAFT=0 skips the
#                      pair)
#   done
# The winner of the lr*_b* runs is what benchmarks/plans/headline_h200.sh trains (LR, BATCH). Each
# schedule's STEPS comes from the measured ~7.1 steps/s at batch 64 (x2 at batch 32), so that it
# ends near the limit; warmup as in common.sh's `recipe`.
# A CPU dry run (its tokens-per-call step takes about 7 minutes there): MODEL=demo IMPL=xla
# IMPLS= LIMIT_S=20 LATE_S=8 STEPS_B64=40 MAX_FILES=600 RECIPES=1e-3:64.
set -u
source benchmarks/plans/common.sh
MODEL=${MODEL:-xlnet_base}
export IMPL=${IMPL:-pallas} CONFIG=configs/${MODEL}.py
LIMIT=${LIMIT_S:-150} LATE_S=${LATE_S:-30} STEPS_B64=${STEPS_B64:-1100}
export TRAIN_S=$((LIMIT + 240))
train() {  # NAME LR BATCH LIMIT [more overrides]: appends to OUT/train_NAME.log
  RUN=$1 STEPS=$((STEPS_B64 * 64 / $3)) LIMIT_S=$4 TRAIN_ARGS="$(recipe "$2" "$3") ${5:-}" \
    bash $S train >> "$OUT/train_$1.log" 2>&1
}

stage start
IMPLS=${IMPLS-cudnn pallas} PROFILE_CONFIG=$MODEL bash $S profile > "$OUT/profile.log" 2>&1
stage profile
bash $S prepare > "$OUT/prepare.log" 2>&1
for RECIPE in ${RECIPES-1.2e-3:64 8.5e-4:32 1.7e-3:128}; do  # RECIPES= runs none
  LR=${RECIPE%:*} BATCH=${RECIPE#*:}
  train "lr${LR}_b${BATCH}" "$LR" "$BATCH" "$LIMIT"
  RUN=lr${LR}_b${BATCH} TASKS=density evaluate "lr${LR}_b${BATCH}"
  stage "lr${LR}_b${BATCH}"
done
if [ "${LATE_DRAFT:-1}" = 1 ]; then
  LATE_RECIPE=${LATE_RECIPE:-1.2e-3:64}
  LR=${LATE_RECIPE%:*} BATCH=${LATE_RECIPE#*:}
  train late_base "$LR" "$BATCH" $((LIMIT - LATE_S))
  cp -r "$RUNS/late_base" "$RUNS/late_draft" && cp "$OUT/train_late_base.log" "$OUT/train_late_draft.log"
  train late_base "$LR" "$BATCH" "$LATE_S"
  train late_draft "$LR" "$BATCH" "$LATE_S" --config.objective.draft_weight=0.25
  for NAME in late_base late_draft; do RUN=$NAME TASKS=density,draft_acceptance evaluate $NAME; done
  if [ "${TOKENS_PER_CALL:-1}" = 1 ]; then
    RUN_LIST="late_base late_draft" bash $S tokens_per_call > "$OUT/tokens_per_call.log" 2>&1
  fi
  stage late_draft
fi
stage done
