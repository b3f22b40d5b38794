#!/bin/bash
# which part of tiny-deep-shallow (4+1) keeps it on the plateau: 2+1 and 4+2 at d_model 128, 600 updates, tiny's recipe at lr 1e-3
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
cd $WORKTREE
export TIEKD_MULTI30K_DIR=$MULTI30K OMP_NUM_THREADS=1
BASE=$RUNS/converged/students/no-kd-tiny-seed1/run/config.yaml
R=$RUNS/diag/$1
resume=""; [ -d $R/checkpoints ] && resume="--resume"
nice -n 10 python -m tiekd train --config $BASE --model $RUNS/diag/$1-init --lr 0.001 \
  --max-updates 3600 --valid-every 200 --out $R $resume
