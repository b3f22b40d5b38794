#!/bin/bash
# Issue 10 item 4, a fixed budget: one of the converged table's student recipes (its config.yaml) trained
# for fewer updates, with the schedule ending there (linear decay to 0), checkpoints every 100 updates and
# the last 5 averaged, so that the average covers the same last quarter as the table's; then scored on
# test_2016_flickr (beam 4, length penalty 0.6) against a baseline row's translations.
#   fixed_budget.sh WORKTREE ROW UPDATES BASELINE_ROW
# ROW and BASELINE_ROW are stage names under results/converged/students/. Run from a worktree pinned at the
# commit that added the calling script; rerun to resume.
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
set -e
[ $# -eq 4 ] || { echo "usage: $0 WORKTREE ROW UPDATES BASELINE_ROW" >&2; exit 2; }
WORKTREE=$1 ROW=$2 UPDATES=$3 BASELINE=$4
cd "$WORKTREE"
export TIEKD_MULTI30K_DIR=$MULTI30K OMP_NUM_THREADS=1
PY=python
STUDENTS=results/converged/students
R=$RUNS/budget/${ROW%%-tiny-*}-$UPDATES-tiny-${ROW##*-tiny-}
D=$RUNS/converged/data
resume=""; [ -f $R/run/config.yaml ] && resume="--resume"
$PY -m tiekd distill --config $STUDENTS/$ROW/run/config.yaml --max-updates $UPDATES --save-every 100 --keep-last 5 --out $R/run $resume
[ -d $R/model ] || $PY -m tiekd average $R/run --last 5 --out $R/model
$PY -m tiekd translate --model $R/model -i $D/test_2016_flickr.de -o $R/test_2016_flickr.hyp --beam 4 --lenpen 0.6 --quiet
$PY -m tiekd evaluate --hyp $R/test_2016_flickr.hyp --ref $D/test_2016_flickr.en \
   --baseline-hyp $STUDENTS/$BASELINE/test_2016_flickr.hyp --json $R/scores.json
echo done
