#!/bin/bash
# Issue 10: the 5,400-update students and the teacher on Multi30k's other test sets (test_2017_flickr,
# test_2017_mscoco, test_2018_flickr; 2,532 sentences beside test_2016_flickr's 1,000), so that TIE-KD
# against Word-KD at convergence rests on more test sentences than one set's (compare.py reads them).
# Only the 5,400-update rows can be scored here: the table's 3,600-update students kept their test
# outputs, not their models. Same decoding as the table (beam 4, length penalty 0.6) and the same pinned
# code (worktree at 9641b41). Each finished row (its scores.txt, written last by longer_schedule.sh) gets
# <set>.hyp beside its test_2016_flickr.hyp in KEEP; outputs already there and newer than the model are
# kept, so a rerun only adds what is missing. About 55-85 s per model on one thread
# (Intel Xeon, 2026-12-06, beside two training runs).
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
set -e
PY=${PY:-python}
CODE=${CODE:-$WORKTREE}       # git worktree at 9641b41
OUT=${OUT:-$RUNS/schedule_check}     # the reruns, with their averaged models (<row>-5400/model)
TEACHER=${TEACHER:-$RUNS/converged/teacher/model}
DATA=${DATA:-$MULTI30K}
KEEP=${KEEP:-$(cd "$(dirname "$0")" && pwd)}
SETS="test_2017_flickr test_2017_mscoco test_2018_flickr"
export OMP_NUM_THREADS=1
cd "$CODE"
translate_sets() {  # $1 model folder, $2 folder for the outputs
  mkdir -p "$2"
  for set in $SETS; do
    # kept only if written after the model (a model averaged again gets new outputs)
    [ -s "$2/$set.hyp" ] && [ "$2/$set.hyp" -nt "$1/model.safetensors" ] && continue
    # written beside, then moved: an interrupted run leaves no half output that a rerun would keep
    $PY -m tiekd translate --model "$1" --input "$DATA/$set.de" --output "$2/$set.hyp.partial" --beam 4 \
      --lenpen 0.6 --quiet
    mv "$2/$set.hyp.partial" "$2/$set.hyp"
  done
}
translate_sets "$TEACHER" "$KEEP/teacher"
for scores in "$OUT"/*-5400/scores.txt; do
  [ -e "$scores" ] || continue
  row=$(basename "$(dirname "$scores")")
  echo "$row"
  translate_sets "$OUT/$row/model" "$KEEP/$row"
done
