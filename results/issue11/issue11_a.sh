#!/bin/bash
# Issue 11 item 3: tiny-deep-shallow No-KD seed 1 on the converged student schedule (same as no-kd-tiny-seed1)
set -e
cd /work/bg/tiekd-issue11
export TIEKD_MULTI30K_DIR=/work/shared/data/multi30k OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
R=/work/bg/runs/issue11/tiny-deep-shallow-nokd-seed1
BASE=/work/bg/runs/converged/students/no-kd-tiny-seed1/run/config.yaml
D=/work/bg/runs/converged/data
resume=""; [ -d $R/run/checkpoints ] && resume="--resume"
$PY -m tiekd train --config $BASE --model tiny-deep-shallow --lr 0.001 --out $R/run $resume
[ -d $R/model ] || $PY -m tiekd average $R/run --last 5 --out $R/model
$PY -m tiekd translate --model $R/model -i $D/test_2016_flickr.de -o $R/test_2016_flickr.hyp --quiet
$PY -m tiekd evaluate --hyp $R/test_2016_flickr.hyp --ref $D/test_2016_flickr.en \
   --baseline-hyp /work/bg/runs/converged/students/no-kd-tiny-seed1/test_2016_flickr.hyp --json $R/scores.json
echo done
