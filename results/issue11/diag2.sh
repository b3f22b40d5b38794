#!/bin/bash
# Is tiny-deep-shallow's (4+1, d128) plateau a seed's luck or the shape? $1 = seed2 | warmup800
# Same recipe as diag.sh (tiny's, lr 1e-3, schedule over 3,600 updates). Planned as a check stopped after update 800;
# seed 2 left the plateau by 600 and was run to the end for the comparison with tiny (docs/RESULTS.md).
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
cd $WORKTREE
export TIEKD_MULTI30K_DIR=$MULTI30K OMP_NUM_THREADS=1
BASE=$RUNS/converged/students/no-kd-tiny-seed1/run/config.yaml
R=$RUNS/diag/enc4-dec1-$1
extra=""; [ "$1" = seed2 ] && extra="--seed 2"; [ "$1" = warmup800 ] && extra="--warmup-updates 800"
resume=""; [ -d $R/checkpoints ] && resume="--resume"
nice -n 5 python -m tiekd train --config $BASE --model tiny-deep-shallow --lr 0.001 \
  --max-updates 3600 --valid-every 200 $extra --out $R $resume
