#!/bin/bash
# Issue 11 item 4: a Seq-KD student on chrF-selected targets (teacher beam 4, 4-best, the entry with the highest
# sentence chrF against the reference), on the converged table's student recipe, seed 1.
# Its 1-best twin is the converged table's Seq-KD row (same recipe, same teacher, --seq-kd-select best).
set -e
cd /work/bg/tiekd-issue11
export TIEKD_MULTI30K_DIR=/work/shared/data/multi30k OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=/work/bg/runs/issue11/seq-kd-chrf-tiny-seed1
BASE=/work/bg/runs/converged/students/word-kd-tiny-seed1/run/config.yaml
D=/work/bg/runs/converged/data
resume=""; [ -d $R/run/checkpoints ] && resume="--resume"
nice -n 5 $PY -m tiekd distill --config $BASE --method seq-kd --seq-kd-targets --seq-kd-nbest 4 --seq-kd-select chrf --out $R/run $resume
[ -d $R/model ] || $PY -m tiekd average $R/run --last 5 --out $R/model
$PY -m tiekd translate --model $R/model -i $D/test_2016_flickr.de -o $R/test_2016_flickr.hyp --quiet
$PY -m tiekd evaluate --hyp $R/test_2016_flickr.hyp --ref $D/test_2016_flickr.en \
   --baseline-hyp /work/bg/runs/converged/students/no-kd-tiny-seed1/test_2016_flickr.hyp --json $R/scores.json
echo done
