#!/bin/bash
# Issue 10 item 1: the anchor script's 40.4 BLEU (its own seed, 1,359 updates) against seed noise. Runs the
# shared anchor unchanged at two more seeds (offsets 1 and 2), each stopped at 1,359 updates
# (results/anchor_seeds/anchor_seed.py), one thread each, one after the other. tiekd's teacher at the same horizon:
# docs/RESULTS.md, "What cost tiekd's teacher its points" (seeds 1 and 2: 39.26 and 38.43 at update 1,400).
# The script cannot resume: an interrupted seed starts again (its folder is removed first).
# Run from a worktree pinned at the commit that added this script; each finished seed is skipped.
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
set -e
cd "$(dirname "$0")/../.."
PY=${PY:-python}
R=${R:-$RUNS/anchor}
for offset in 1 2; do
  out=$R/seed$offset/teacher
  [ -f $out/anchor_seed.json ] && continue
  rm -rf $R/seed$offset && mkdir -p $out
  OMP_NUM_THREADS=1 $PY results/anchor_seeds/anchor_seed.py --anchor $ANCHORS/hf_marian_baseline.py \
    --data $MULTI30K --out $out --seed-offset $offset --updates 1359 > $R/seed$offset.log 2>&1
  mkdir -p results/anchor_seeds/seed$offset && cp $out/anchor_seed.json $out/log.jsonl results/anchor_seeds/seed$offset/
done
echo done
