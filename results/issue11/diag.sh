#!/bin/bash
# which part of tiny-deep-shallow (4+1) keeps it on the plateau: 2+1 and 4+2 at d_model 128, 600 updates, tiny's recipe at lr 1e-3
cd /work/bg/tiekd-issue11
export TIEKD_MULTI30K_DIR=/work/shared/data/multi30k OMP_NUM_THREADS=1
BASE=/work/bg/runs/converged/students/no-kd-tiny-seed1/run/config.yaml
R=/work/bg/runs/diag/$1
resume=""; [ -d $R/checkpoints ] && resume="--resume"
nice -n 10 /work/main/.venv/bin/python -m tiekd train --config $BASE --model /work/bg/runs/diag/$1-init --lr 0.001 \
  --max-updates 3600 --valid-every 200 --out $R $resume
