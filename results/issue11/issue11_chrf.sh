#!/bin/bash
# Issue 11 item 4: a Seq-KD student on chrF-selected targets (teacher beam 4, 4-best, the entry with the highest
# sentence chrF against the reference), on the converged table's student recipe, seed 1.
# Its 1-best twin is the converged table's Seq-KD row (same recipe, same teacher, --seq-kd-select best).
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
set -e
cd $WORKTREE
export TIEKD_MULTI30K_DIR=$MULTI30K OMP_NUM_THREADS=1
PY=python
R=$RUNS/issue11/seq-kd-chrf-tiny-seed1
BASE=$RUNS/converged/students/word-kd-tiny-seed1/run/config.yaml
D=$RUNS/converged/data
resume=""; [ -d $R/run/checkpoints ] && resume="--resume"
nice -n 5 $PY -m tiekd distill --config $BASE --method seq-kd --seq-kd-targets --seq-kd-nbest 4 --seq-kd-select chrf --out $R/run $resume
[ -d $R/model ] || $PY -m tiekd average $R/run --last 5 --out $R/model
$PY -m tiekd translate --model $R/model -i $D/test_2016_flickr.de -o $R/test_2016_flickr.hyp --quiet
$PY -m tiekd evaluate --hyp $R/test_2016_flickr.hyp --ref $D/test_2016_flickr.en \
   --baseline-hyp $RUNS/converged/students/no-kd-tiny-seed1/test_2016_flickr.hyp --json $R/scores.json
echo done
