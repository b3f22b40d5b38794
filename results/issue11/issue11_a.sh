#!/bin/bash
# Issue 11 item 3: tiny-deep-shallow No-KD seed 1 on the converged student schedule (same as no-kd-tiny-seed1)
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
set -e
cd $WORKTREE
export TIEKD_MULTI30K_DIR=$MULTI30K OMP_NUM_THREADS=1
PY=python
R=$RUNS/issue11/tiny-deep-shallow-nokd-seed1
BASE=$RUNS/converged/students/no-kd-tiny-seed1/run/config.yaml
D=$RUNS/converged/data
resume=""; [ -d $R/run/checkpoints ] && resume="--resume"
$PY -m tiekd train --config $BASE --model tiny-deep-shallow --lr 0.001 --out $R/run $resume
[ -d $R/model ] || $PY -m tiekd average $R/run --last 5 --out $R/model
$PY -m tiekd translate --model $R/model -i $D/test_2016_flickr.de -o $R/test_2016_flickr.hyp --quiet
$PY -m tiekd evaluate --hyp $R/test_2016_flickr.hyp --ref $D/test_2016_flickr.en \
   --baseline-hyp $RUNS/converged/students/no-kd-tiny-seed1/test_2016_flickr.hyp --json $R/scores.json
echo done
