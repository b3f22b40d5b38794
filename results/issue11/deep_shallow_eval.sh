#!/bin/bash
# Issue 11 item 3: test BLEU of the 4+1 (tiny-deep-shallow, seed 2, lr 1e-3) student, then its decoding speed
# beside tiny (No-KD seed 1) and the teacher. Pause the table workers (SIGSTOP) for the speed part.
# WORKTREE and R name another checkout and run folder (diag3.sh).
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
set -e
cd ${WORKTREE:-$WORKTREE}
export OMP_NUM_THREADS=1
PY=python
R=${R:-$RUNS/diag/enc4-dec1-seed2}  # diag3.sh passes its own run
D=$RUNS/converged/data
[ -d $R-model ] || $PY -m tiekd average $R --last 5 --out $R-model
for beam in 4 1; do
  $PY -m tiekd translate --model $R-model -i $D/test_2016_flickr.de -o $R-test.b$beam.hyp --beam $beam --lenpen 0.6 --quiet
done
$PY -m tiekd evaluate --hyp $R-test.b4.hyp --ref $D/test_2016_flickr.en \
  --baseline-hyp $RUNS/converged/students/no-kd-tiny-seed1/test_2016_flickr.hyp --json $R-test.b4.json
[ "$1" = speed ] || exit 0
$PY benchmarks/bench_speed.py --model teacher=$RUNS/converged/teacher/model \
  --model tiny=$RUNS/converged/students/no-kd-tiny-seed1/model --model tiny-deep-shallow=$R-model \
  --source $D/test_2016_flickr.de --reference $D/test_2016_flickr.en \
  --engines ct2-float32,ct2-int8,ct2-int8-shortlist --threads 1 --beams 1,4 --repeats 3 \
  --shortlist $D/train.de $D/train.en --json $RUNS/bench_speed_deep_shallow.json | tee $RUNS/bench_speed_deep_shallow.txt
