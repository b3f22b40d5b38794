#!/bin/bash
# Issue 11 item 3, the open half: the 4+1 shape (tiny-deep-shallow, d128) at tiny's own tuned learning rate.
# Same schedule as the table's No-KD rows (lr 2e-3, 200 warm-up updates, linear decay over 3,600 updates),
# seed 2 (the seed that left the early plateau at lr 1e-3, diag2.sh). $1 = train | eval.
# Runs from a worktree of the commit that added this script; data and reference student from runs/converged.
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
set -e
W=${WORKTREE:-$WORKTREE}
cd $W
export TIEKD_MULTI30K_DIR=$MULTI30K OMP_NUM_THREADS=1
PY=python
BASE=$RUNS/converged/students/no-kd-tiny-seed1/run/config.yaml
R=$RUNS/diag/enc4-dec1-seed2-lr2e-3
if [ "$1" = train ]; then
  resume=""; [ -d $R/checkpoints ] && resume="--resume"
  exec nice -n 5 $PY -m tiekd train --config $BASE --model tiny-deep-shallow --lr 0.002 \
    --max-updates 3600 --valid-every 200 --seed 2 --out $R $resume
fi
export WORKTREE=$W R  # deep_shallow_eval.sh: average the last 5, translate, score against tiny
exec "$(dirname "$0")/deep_shallow_eval.sh"
