#!/bin/bash
# Issue 10 item 2: is 3,600 updates converged? Table rows' recipes (default: No-KD and Word-KD seed 1;
# or name rows, e.g. `longer_schedule.sh tie-kd-tiny-seed1:distill word-kd-tiny-seed2:distill`), unchanged
# except for a 5,400-update schedule (the linear decay stretched to the new end), against their 3,600-update
# rows (docs/RESULTS.md, "The reading", convergence bullet). Resumable: rerun the same command after an
# interruption and each run goes on from its newest checkpoint; a finished run is skipped.
# Runs the pinned table code (worktree at 9641b41, like every row) on the table's data and teacher.
# WORKERS one-thread processes (default 2, one per core) take the rows in the order given; each row is
# locked while it trains (flock on <row>-5400.lock), so a second driver of this script started beside this
# one, or a worker reaching a row another holds, skips it instead of training it twice. (Copies of the
# script from before the lock, 2026-12-05 21:42, take no lock: never list their rows while they run.)
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
set -e
PY=${PY:-python}
CODE=${CODE:-$WORKTREE}       # git worktree at 9641b41
TABLE=${TABLE:-$RUNS/converged}      # the table's experiment folder (data/, teacher/, students/)
OUT=${OUT:-$RUNS/schedule_check}
REF=${REF:-$MULTI30K/test_2016_flickr.en}
SRC=${SRC:-$MULTI30K/test_2016_flickr.de}
KEEP=${KEEP:-$(cd "$(dirname "$0")" && pwd)}  # where finished results are copied
WORKERS=${WORKERS:-2}
export OMP_NUM_THREADS=1 GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456
cd "$CODE"
one() {  # $1 row folder name in the table, $2 subcommand (train or distill)
  # Each step says `|| return 1` itself: `set -e` does not act inside a function called from `&&`/`||`.
  local row=$1 command=$2
  local folder=$OUT/$row-5400
  local run=$folder/run model=$folder/model
  [ -f "$folder/scores.txt" ] && return 0
  mkdir -p "$folder"
  local resume=""; [ -f "$run/config.yaml" ] && resume=--resume  # a run folder without a checkpoint resumes from update 0
  # appended, so a failed attempt's log survives the retry
  $PY -m tiekd $command --config "$TABLE/students/$row/run/config.yaml" --out "$run" --max-updates 5400 $resume \
    >> "$folder/train.log" 2>&1 || return 1
  # a run stopped by a signal saves a checkpoint and exits 0: only a run that reached 5,400 goes on
  $PY -c 'import json, sys; s = json.load(open(sys.argv[1])); sys.exit(s["step"] != 5400 or s["interrupted"])' \
    "$run/summary.json" || { echo "$row: training stopped before update 5400"; return 1; }
  $PY -m tiekd average "$run" --last 5 --out "$model" --overwrite || return 1
  $PY -m tiekd translate --model "$model" --input "$SRC" --output "$folder/test_2016_flickr.hyp" --beam 4 \
    --lenpen 0.6 --quiet || return 1
  $PY -m tiekd evaluate --hyp "$folder/test_2016_flickr.hyp" --baseline-hyp "$TABLE/students/$row/test_2016_flickr.hyp" \
    --ref "$REF" > "$folder/scores.partial" 2>&1 || return 1
  mkdir -p "$KEEP/$row-5400" || return 1
  cp "$folder/test_2016_flickr.hyp" "$run/metrics.jsonl" "$run/config.yaml" "$KEEP/$row-5400/" || return 1
  cp "$folder/scores.partial" "$KEEP/$row-5400/scores.txt" || return 1
  # last: scores.txt marks the row finished, so it appears only once everything above is kept
  mv "$folder/scores.partial" "$folder/scores.txt"
}
locked() {  # run `one` for a row unless another process holds its lock; $1 row, $2 subcommand
  mkdir -p "$OUT"
  (
    flock -n 9 || { echo "$1: trained by another process, skipped"; exit 0; }
    one "$1" "$2" && echo "$1: done"
  ) 9> "$OUT/$1-5400.lock"
}
worker() {  # walk every row; finished rows and rows locked by another worker are skipped; non-zero if any failed
  local failed=0
  for spec in "$@"; do
    locked "${spec%:*}" "${spec##*:}" || {
      failed=1
      echo "${spec%:*}: failed (messages above; training's in $OUT/${spec%:*}-5400/train.log)." \
        "Rerun the same command to resume it."
    }
  done
  return $failed
}
# Rows as <table row folder>:<subcommand>, split at the last colon (some folders hold colons, e.g.
# "ablation-ranking-only-tiny-seed1:distill"); the default is the first pair measured.
[ $# -eq 0 ] && set -- no-kd-tiny-seed1:train word-kd-tiny-seed1:distill
workers=()
for ((index = 0; index < WORKERS; index++)); do
  worker "$@" &
  workers+=($!)
  sleep 2  # let this worker take its row's lock before the next one looks
done
status=0
for pid in "${workers[@]}"; do wait "$pid" || status=1; done
[ $status -eq 0 ] && echo "done" || echo "done, with failed rows (above)"
exit $status
