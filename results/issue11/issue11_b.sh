#!/bin/bash
# Issue 11 item 2: teacher-deep-shallow from scratch ($1=scratch) or initialised from the converged teacher ($1=init),
# No-KD, 800 updates, lr 1e-3 linear decay, validation (full set, greedy) every 100 updates
set -e
cd /work/bg/tiekd-issue11
export TIEKD_MULTI30K_DIR=/work/shared/data/multi30k OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=/work/bg/runs/issue11/teacher-deep-shallow-$1
BASE=/work/bg/runs/converged/students/no-kd-tiny-seed1/run/config.yaml
D=/work/bg/runs/converged/data
T=/work/bg/runs/converged/teacher/model
init=""; [ "$1" = init ] && init="--init-from-teacher"
resume=""; [ -d $R/run/checkpoints ] && resume="--resume"
$PY -m tiekd distill --allow-no-kd --config $BASE --model teacher-deep-shallow --teacher $T $init --lr 0.001 --max-updates 800 \
   --valid-every 100 --save-every 100 --out $R/run $resume
[ -d $R/model ] || $PY -m tiekd average $R/run --last 3 --out $R/model
$PY -m tiekd translate --model $R/model -i $D/test_2016_flickr.de -o $R/test_2016_flickr.hyp --quiet
$PY -m tiekd evaluate --hyp $R/test_2016_flickr.hyp --ref $D/test_2016_flickr.en --json $R/scores.json
echo done
