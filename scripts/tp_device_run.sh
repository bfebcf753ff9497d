#!/usr/bin/env bash
# The two-GPU runs behind BENCHMARKS.md's tensor-parallel section (issue 15), in priority order, each stage's
# log in $LOG and a line per stage in $LOG/summary.txt. Needs 2 GPUs, the checkpoint metadata in
# $VLMCAP_SHARED_CHECKPOINTS, Ray importable (device: .devpkgs) for the last stage, ~60 GB of free disk.
#   LOG=/tmp/tp_run bash scripts/tp_device_run.sh [stage ...]    # stages: env b90 b72 tests b11 b11tp2 ray
# Keep $VLMCAP_SHARED_CHECKPOINTS outside the repo copy on the device: each `run` call re-syncs the tree and
# removes untracked paths that are not in the local checkout (a .shared/ extracted there vanished mid-run).
# Each stage runs under `timeout $STAGE_TIMEOUT` (420 s). On the device, start it with setsid in the background
# and poll $LOG/summary.txt across calls (the machine stays warm only ~30 s between calls); do not `git stash`
# there: the device copy's .git is an older commit, and a stash takes the whole working tree (and carried
# dirs) with it, as happened once.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${LOG:-/tmp/tp_run}
SHARED=${VLMCAP_SHARED_CHECKPOINTS:?set VLMCAP_SHARED_CHECKPOINTS}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
stage() {
  local name=$1; shift
  echo "== $name start $(date +%T)" >> "$LOG/summary.txt"
  timeout "${STAGE_TIMEOUT:-420}" bash -c "$*" > "$LOG/$name.log" 2>&1  # a hang costs one stage, not the lease
  local rc=$?
  echo "   $name rc=$rc end $(date +%T): $(grep -E '^\| ours|^ours:|passed|failed|ALL OK|CHECK FAILED|identical' "$LOG/$name.log" | tail -4 | tr '\n' ' ' | cut -c1-600)" >> "$LOG/summary.txt"
}
env_info() { nvidia-smi -L; nvidia-smi topo -m; env | grep -E '^(NCCL|NVSHMEM|TORCH_SYMM)' ; python3 -c "import torch; print(torch.__version__, torch.cuda.device_count())"; }
bench() { python3 jobs/bench.py --skip-hf --new-tokens 64 "$@"; }
ray_stage() {
  [ -d /tmp/mllama-11b-random ] || python3 scripts/write_random_checkpoint.py \
      --config "$SHARED/Llama-3.2-11B-Vision-Instruct" --out /tmp/mllama-11b-random || return 1
  python3 scripts/tp_ray_check.py --model /tmp/mllama-11b-random --rows ${RAY_ROWS:-256} --kill-rows ${RAY_KILL_ROWS:-128} --work /tmp/tp_ray
}
export -f env_info bench ray_stage
export LOG SHARED
stages=${*:-env b90 b72 tests b11 ray}
for s in $stages; do
  case $s in
    env) stage env env_info ;;
    tests) stage tests python3 -m pytest tests/gpu/test_tp_nccl.py tests/gpu/test_engine_dtypes.py -s -q -rA -p no:cacheprovider ;;
    b90) stage b90 bench --model mllama-90b --tp 2 --images 128 --small-images 32 --image-size 1120 --json "$LOG/b90.json" ;;
    b72) stage b72 bench --model onevision-72b --tp 2 --images 32 --small-images 8 --image-size 768 --json "$LOG/b72.json" ;;
    b11) stage b11_tp1 bench --model mllama-11b --images 256 --image-size 1120 --json "$LOG/b11_tp1.json"
         stage b11_tp2 bench --model mllama-11b --tp 2 --images 256 --image-size 1120 --json "$LOG/b11_tp2.json" ;;
    b11tp2) stage b11_tp2 bench --model mllama-11b --tp 2 --images 256 --image-size 1120 --json "$LOG/b11_tp2.json" ;;
    ray) stage ray ray_stage ;;
  esac
done
echo "DONE $(date +%T)" >> "$LOG/summary.txt"
