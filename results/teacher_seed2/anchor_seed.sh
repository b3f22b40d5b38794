#!/bin/bash
# Issue 10 item 1: the anchor (../shared/anchors/hf_marian_baseline.py, 40.38 BLEU with its fixed seed 0
# after 1,359 updates) at another seed, so that tiekd's two teacher seeds meet more than one anchor seed.
# The anchor stops on a wall-clock budget, which on a shared machine buys fewer updates; this runs an
# edited copy (in /tmp, not in the project) that stops after exactly 1,359 updates and seeds torch and
# random with $1. One thread. Usage: anchor_seed.sh SEED   (writes $RUNS/anchor-seed$1)
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
set -e
SEED=${1:?usage: anchor_seed.sh SEED}
ANCHOR=$ANCHORS/hf_marian_baseline.py
COPY=/tmp/hf_marian_baseline_seed$SEED.py
OUT=$RUNS/anchor-seed$SEED/teacher
grep -q 'torch.manual_seed(0); random.seed(0)' $ANCHOR && grep -q 'while (time.time() - t0) / 60 < budget_min:' $ANCHOR \
  || { echo "$ANCHOR changed: the edits below no longer apply; read it and edit them" >&2; exit 1; }
sed -e "s/torch.manual_seed(0); random.seed(0)/torch.manual_seed($SEED); random.seed($SEED)/" \
    -e 's/while (time.time() - t0) \/ 60 < budget_min:/while step < 1359:/' \
    -e 's/if (time.time() - t0) \/ 60 >= budget_min: break/if step >= 1359: break/' $ANCHOR > $COPY
[ "$(grep -c 'step < 1359\|step >= 1359' $COPY)" = 2 ] || { echo "edit of $ANCHOR failed" >&2; exit 1; }
mkdir -p $OUT
OMP_NUM_THREADS=1 python $COPY $MULTI30K $OUT 256 3 1024 4 0 2>&1 | tee $OUT/log.txt
