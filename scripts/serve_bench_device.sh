#!/usr/bin/env bash
# Issue 14 criterion 4 on one lent H200 in a single `run` call (<= 600 s): the online endpoint (jobs/serve.py on
# Ray Serve, Mllama-11B shapes, random weights) at concurrency 1/16/64, then the offline engine on the same
# workload, through scripts/serve_bench.py. Results: $OUT/serve_bench.json, the bench's output
# $OUT/serve_bench.log, the server's (Ray's) output $OUT/serve_bench.server.log.
# The device has no Ray: carry .devpkgs (Ray + Serve's FastAPI stack) and .devdata (checkpoint metadata):
#   SERVE=1 bash ../shared/device/pack.sh
#   mkdir -p .devdata && tar -C ../shared -cJf .devdata/ckpt.tar.xz checkpoints
# run(kind="nvidia-h200", carry=[".devpkgs", ".devdata"], timeout_s=600,
#     command="bash scripts/serve_bench_device.sh")
# Extra arguments go to serve_bench.py (e.g. --requests-per-level 16,64,192 --serve-arg=--max-decode-stall-ms=0;
# an A/B in one call: --levels 64 --requests-per-level 192 --ab-serve-arg=--no-engine-process; more variants, each
# ~90 s at one level: --variant "--max-decode-stall-ms 400" --variant "--stage-vision-images 2").
# TRACE=1 adds --step-trace: every engine's per-step lines (pipeline/engine/step_trace.py) come back as one
# $OUT/step_traces.tgz and their summaries end the log (admission cost by size in the replica vs offline).
# Checkpoints are extracted to /tmp/vshared, outside the repo copy: each `run` call re-syncs the tree and
# removes untracked paths. The bench keeps its phases within --budget-s (~510 s) and writes its JSON after every
# phase; `timeout` is only the last resort before the call's own limit.
set -uo pipefail
R=$(cd "$(dirname "$0")/.." && pwd)
cd "$R"
OUT=${OUT:-/tmp/serve_bench_out}
mkdir -p "$OUT" /tmp/vshared
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0  # no network on the device: skip Ray's usage report
t0=$(date +%s)
bash .devpkgs/install.sh > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
[ -d /tmp/vshared/checkpoints/Llama-3.2-11B-Vision-Instruct ] || tar -C /tmp/vshared -xJf .devdata/ckpt.tar.xz
export VLMCAP_SHARED_CHECKPOINTS=/tmp/vshared/checkpoints
left=$(( 590 - ($(date +%s) - t0) ))  # of the call's 600 s; the bench's stop + report need ~55 s past its budget
echo "setup $(( $(date +%s) - t0 )) s; $(nvidia-smi -L | head -1)" | tee "$OUT/serve_bench.log"
timeout "$left" python3 scripts/serve_bench.py --model-dir "$VLMCAP_SHARED_CHECKPOINTS/Llama-3.2-11B-Vision-Instruct" \
  --random-weights --levels 1,16,64 --max-tokens 64 --image-size 560 --max-num-seqs 64 \
  --budget-s "${BUDGET:-$(( left - 55 ))}" --json "$OUT/serve_bench.json" ${TRACE:+--step-trace /tmp/step_traces} \
  "$@" 2>&1 | grep --line-buffered -v Warning | tee -a "$OUT/serve_bench.log"
rc=${PIPESTATUS[0]}
[ -n "${TRACE:-}" ] && [ -d /tmp/step_traces ] && tar -C /tmp -czf "$OUT/step_traces.tgz" step_traces
echo "serve_bench exit $rc, total $(( $(date +%s) - t0 )) s" | tee -a "$OUT/serve_bench.log"
exit "$rc"
