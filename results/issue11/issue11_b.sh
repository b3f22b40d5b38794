#!/bin/bash
# Issue 11 item 2: teacher-deep-shallow from scratch ($1=scratch) or initialised from the converged teacher ($1=init),
# No-KD, 800 updates, lr 1e-3 linear decay, validation (full set, greedy) every 100 updates
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
set -e
cd $WORKTREE
export TIEKD_MULTI30K_DIR=$MULTI30K OMP_NUM_THREADS=1
PY=python
R=$RUNS/issue11/teacher-deep-shallow-$1
BASE=$RUNS/converged/students/no-kd-tiny-seed1/run/config.yaml
D=$RUNS/converged/data
T=$RUNS/converged/teacher/model
init=""; [ "$1" = init ] && init="--init-from-teacher"
resume=""; [ -d $R/run/checkpoints ] && resume="--resume"
$PY -m tiekd distill --allow-no-kd --config $BASE --model teacher-deep-shallow --teacher $T $init --lr 0.001 --max-updates 800 \
   --valid-every 100 --save-every 100 --out $R/run $resume
[ -d $R/model ] || $PY -m tiekd average $R/run --last 3 --out $R/model
$PY -m tiekd translate --model $R/model -i $D/test_2016_flickr.de -o $R/test_2016_flickr.hyp --quiet
$PY -m tiekd evaluate --hyp $R/test_2016_flickr.hyp --ref $D/test_2016_flickr.en --json $R/scores.json
echo done
