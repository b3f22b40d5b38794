#!/bin/bash
# Issue 10 item 2: is 3,600 updates converged? Table rows' recipes (default: No-KD and Word-KD seed 1;
# or name rows, e.g. `longer_schedule.sh tie-kd-tiny-seed1:distill word-kd-tiny-seed2:distill`), unchanged
# except for a 5,400-update schedule (the linear decay stretched to the new end), against their 3,600-update
# rows (docs/RESULTS.md, "The reading", convergence bullet). Resumable: rerun the same command after an
# interruption and each run goes on from its newest checkpoint; a finished run is skipped.
# Runs the pinned table code (worktree at 9641b41, like every row) on the table's data and teacher;
# one one-thread process per method, side by side.
set -e
PY=${PY:-/work/main/.venv/bin/python}
CODE=${CODE:-/work/bg/tiekd-students}       # git worktree at 9641b41
TABLE=${TABLE:-/work/bg/runs/converged}      # the table's experiment folder (data/, teacher/, students/)
OUT=${OUT:-/work/bg/runs/schedule_check}
REF=${REF:-/work/shared/data/multi30k/test_2016_flickr.en}
SRC=${SRC:-/work/shared/data/multi30k/test_2016_flickr.de}
KEEP=${KEEP:-$(cd "$(dirname "$0")" && pwd)}  # where finished results are copied
export OMP_NUM_THREADS=1 GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456
cd "$CODE"
one() {  # $1 row folder name in the table, $2 subcommand (train or distill)
  local row=$1 command=$2
  local run=$OUT/$row-5400/run model=$OUT/$row-5400/model
  [ -f "$OUT/$row-5400/scores.txt" ] && return 0
  mkdir -p "$OUT/$row-5400"
  local resume=""; [ -f "$run/config.yaml" ] && resume=--resume  # a run folder without a checkpoint resumes from update 0
  $PY -m tiekd $command --config "$TABLE/students/$row/run/config.yaml" --out "$run" --max-updates 5400 $resume \
    > "$OUT/$row-5400/train.log" 2>&1
  $PY -m tiekd average "$run" --last 5 --out "$model" --overwrite
  $PY -m tiekd translate --model "$model" --input "$SRC" --output "$OUT/$row-5400/test_2016_flickr.hyp" --beam 4 --lenpen 0.6 --quiet
  $PY -m tiekd evaluate --hyp "$OUT/$row-5400/test_2016_flickr.hyp" --baseline-hyp "$TABLE/students/$row/test_2016_flickr.hyp" \
    --ref "$REF" > "$OUT/$row-5400/scores.txt" 2>&1
  mkdir -p "$KEEP/$row-5400" && cp "$OUT/$row-5400/scores.txt" "$OUT/$row-5400/test_2016_flickr.hyp" "$run/metrics.jsonl" \
    "$run/config.yaml" "$KEEP/$row-5400/"
}
# Rows as <table row folder>:<subcommand>, one process each; the default is the first pair measured.
[ $# -eq 0 ] && set -- no-kd-tiny-seed1:train word-kd-tiny-seed1:distill
for spec in "$@"; do
  one "${spec%%:*}" "${spec##*:}" &
done
wait
echo done
