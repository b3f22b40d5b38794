#!/usr/bin/env bash
# One prepared GPU session on one H100/H200: the training-step benchmark (tokens/s, MFU, peak memory for
# none / word-KD / TIE-KD), the loss benchmark on CUDA, then `tiekd experiment --preset gpu` in the time
# that is left, its report from whatever finished, and one tarball of the results.
#   OUT=/some/folder TIEKD_MULTI30K_DIR=/path/to/multi30k bash benchmarks/gpu_session.sh
# The whole script ends within TOTAL_SECONDS (default 520, under the device tool's 10-minute command limit
# with room for the machine's start): the experiment gets what the steps before it left, less the report's
# reserve, so a slow benchmark shortens the experiment instead of the session overrunning.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export TIEKD_MULTI30K_DIR=${TIEKD_MULTI30K_DIR:-$PWD/.gpu/multi30k}
OUT=${OUT:-runs/gpu-session}
WORK=${WORK:-/tmp/tiekd-gpu}
TOTAL_SECONDS=${TOTAL_SECONDS:-520}
REPORT_RESERVE=${REPORT_RESERVE:-50}
STARTED=$(date +%s)
seconds_left() { echo $(( TOTAL_SECONDS - ($(date +%s) - STARTED) )); }
mkdir -p "$OUT" "$WORK"
log() { echo "[$(date +%H:%M:%S)] $*"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, sacrebleu; print('torch', torch.__version__, 'transformers', transformers.__version__, 'sacrebleu', sacrebleu.__version__)"
  nproc
} > "$OUT/machine.txt" 2>&1
log "prepare"
python3 -m tiekd prepare --multi30k "$TIEKD_MULTI30K_DIR" --out "$WORK/data" --vocab-size 8000 > "$OUT/prepare.txt" 2>&1
log "training-step benchmark"
timeout 150 python3 benchmarks/bench_train_step.py --data "$WORK/data" --device cuda --student base --teacher big \
  --max-tokens 8192 --steps 15 --warmup 3 --json "$WORK/bench_step_base_big.json" > "$OUT/bench_step.txt" 2>&1
timeout 90 python3 benchmarks/bench_train_step.py --data "$WORK/data" --device cuda --student small --teacher teacher \
  --max-tokens 8192 --steps 15 --warmup 3 --json "$WORK/bench_step_small_teacher.json" >> "$OUT/bench_step.txt" 2>&1
log "teacher-logit cache against the live teacher"
# builds the cache of the whole training set (14.5 GB at 8k pieces) first: does reading it pay on a GPU?
timeout 100 python3 benchmarks/bench_train_step.py --data "$WORK/data" --device cuda --student small --teacher teacher \
  --max-tokens 8192 --steps 15 --warmup 3 --methods none,word-kd,word-kd+cache,tie-kd:3,tie-kd:3+cache \
  --teacher-cache "$WORK/teacher-cache" --json "$WORK/bench_step_teacher_cache.json" > "$OUT/bench_teacher_cache.txt" 2>&1
rm -rf "$WORK/teacher-cache"
log "loss benchmark"
timeout 60 python3 benchmarks/bench_losses.py --device cuda --tokens 4096 --vocab 8000 --repeat 3 \
  --json "$WORK/bench_losses.json" > "$OUT/bench_losses.txt" 2>&1
EXPERIMENT_SECONDS=${EXPERIMENT_SECONDS:-$(( $(seconds_left) - REPORT_RESERVE ))}
log "experiment (time box ${EXPERIMENT_SECONDS}s)"
timeout "$EXPERIMENT_SECONDS" python3 -m tiekd experiment --preset gpu --out "$WORK/exp" > "$OUT/experiment.log" 2>&1
log "report from finished stages"
left=$(seconds_left)
timeout $(( left > 20 ? left : 20 )) python3 -m tiekd experiment --preset gpu --out "$WORK/exp" --report-only >> "$OUT/experiment.log" 2>&1
(cd "$WORK" && tar czf - --exclude='*.safetensors' --exclude='*.pt' --exclude='*.spm' --exclude='chunks' \
   --exclude='seqkd' --exclude='data' --exclude='slice' --exclude='tensorboard' exp bench_*.json) > "$OUT/results.tar.gz"
log "done"
