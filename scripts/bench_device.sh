#!/usr/bin/env bash
# Issue 16 on one lent H200 in a single `run` call (<= 600 s): the GPU correctness tests, then jobs/bench.py on
# Mllama-11B (default settings, then staged vision under a stall budget), each with a batch run, Poisson arrivals
# at a steady state of many running sequences and the per-step trace, then OneVision-7B. No Ray needed:
#   mkdir -p .devdata && tar -C ../shared -cJf .devdata/ckpt.tar.xz checkpoints/Llama-3.2-11B-Vision-Instruct \
#       checkpoints/llava-onevision-qwen2-7b-ov-hf checkpoints/llava-onevision-qwen2-0.5b-ov-hf
#   run(kind="nvidia-h200", carry=[".devdata"], timeout_s=600, command="bash scripts/bench_device.sh")
# STEPS picks and orders the parts (default "tests mllama staged onevision"; also probe, probe-ov:
# scripts/vision_overlap_probe.py on Mllama / OneVision; mllama-batch: the batch run without arrivals; pipeline:
# Ray Data end to end against the engine alone, which needs `bash ../shared/device/pack.sh` and .devpkgs carried
# too, with .devdata holding only the Llama checkpoint's metadata to stay under 64 MiB); each
# part gets its own timeout within the call's 600 s and the parts that no longer fit are skipped (printed).
# Results under $OUT (the device returns only a few files): results.tgz with bench_logs/ (summary.txt, each
# part's <part>.log and <part>.json) and bench_traces/ (every bench's step trace: `python -m
# pipeline.engine.step_trace DIR/steps-*.jsonl` summarises one). VLMCAP_DECODE_ATTENTION=sdpa in the
# environment reruns everything on SDPA's decode attention (A/B).
set -uo pipefail
R=$(cd "$(dirname "$0")/.." && pwd)
cd "$R"
OUT=${OUT:-/tmp/bench_out}
LOGS=/tmp/bench_logs  # one tarball comes back: the device returns only a few files
mkdir -p "$OUT" /tmp/vshared /tmp/bench_traces $LOGS
export PYTHONUNBUFFERED=1
t0=$(date +%s)
[ -d /tmp/vshared/checkpoints ] || tar -C /tmp/vshared -xJf .devdata/ckpt.tar.xz
export VLMCAP_SHARED_CHECKPOINTS=/tmp/vshared/checkpoints
ARRIVALS="--arrival-rate 14 --arrival-requests 1024 --arrival-new-tokens 256"
MLLAMA_DIR=Llama-3.2-11B-Vision-Instruct
HF=${HF---skip-hf}  # HF= (empty) runs HF transformers in the same bench (the issue's tables want it; +1-2 min each)
MLLAMA="--model mllama-11b --images 256 --image-size 1120 --new-tokens 64 $HF --small-images 0"

part() {  # name, seconds it needs, seconds it may take at most, command...
  local name=$1 need=$2 cap=$3
  shift 3
  local left=$(( 585 - ($(date +%s) - t0) ))
  if (( left < need )); then
    echo "== $name skipped: $left s left, needs ~$need" | tee -a "$LOGS/summary.txt"
    return
  fi
  local s=$(date +%s)
  timeout "$(( left < cap ? left : cap ))" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  echo "== $name rc $rc in $(( $(date +%s) - s )) s" | tee -a "$LOGS/summary.txt"
  tail -8 "$LOGS/$name.log"
}

for step in ${STEPS:-tests mllama staged onevision}; do
  case $step in
    tests) part tests 90 200 python -m pytest -q -p no:cacheprovider tests/gpu --ignore=tests/gpu/test_tp_nccl.py ;;
    mllama) part mllama 150 240 python jobs/bench.py $MLLAMA $ARRIVALS --step-trace /tmp/bench_traces/mllama \
        --json "$LOGS/mllama.json" ;;
    staged) part staged 150 240 python jobs/bench.py $MLLAMA $ARRIVALS --max-decode-stall-ms 130 \
        --stage-vision-images 2 --step-trace /tmp/bench_traces/staged --json "$LOGS/staged.json" ;;
    probe) part probe 120 220 python scripts/vision_overlap_probe.py --model-dir "$VLMCAP_SHARED_CHECKPOINTS/$MLLAMA_DIR" \
        --random-weights --image-size 1120 --images 16 --json "$LOGS/probe.json" ;;
    probe-ov) part probe_ov 60 150 python scripts/vision_overlap_probe.py --skip-overlap --widths 1 --random-weights \
        --model-dir "$VLMCAP_SHARED_CHECKPOINTS/llava-onevision-qwen2-7b-ov-hf" --image-size 768 --profile-prefill 8 \
        --json "$LOGS/probe_ov.json" ;;
    gemv) part gemv 60 200 env PYTHONPATH=. bash -c 'python scripts/gemv_bench.py --rows 1 --json /tmp/bench_logs/gemv_grid.json \
        && python scripts/gemv_bench.py --quick --rows 2 4 8 16 --json /tmp/bench_logs/gemv_rows.json' ;;
    b1-mllama|b1-onevision)  # the batch-1 decode step without and with ops.gemv (short runs: 32 images)
      m=${step#b1-}
      if [ "$m" = mllama ]; then model=mllama-11b size=1120; else model=onevision-7b size=768; fi
      part "b1_$m" 100 220 bash -c "for g in off on; do VLMCAP_GEMV=\$g python jobs/bench.py --model $model \
        --images 32 --image-size $size --new-tokens 64 --skip-hf --small-images 0 \
        --json $LOGS/b1_${m}_\$g.json | grep -A4 images/s; done" ;;
    tests-ov) part tests_ov 40 150 python -m pytest -q -p no:cacheprovider tests/gpu/test_onevision_bf16.py tests/gpu/test_gemv.py \
        tests/gpu/test_engine_graphs.py -k "onevision or gemv" ;;
    mllama-batch) part mllama_batch 100 300 python jobs/bench.py $MLLAMA --json "$LOGS/mllama_batch.json" ;;
    pipeline)  # criterion 4: Ray Data end to end against the engine alone (BENCHMARKS.md); needs .devpkgs (Ray)
      part pipeline 300 420 bash -c 'bash .devpkgs/install.sh > /dev/null && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} \
        && python jobs/bench_pipeline.py --model mllama-11b --images ${PIPE_IMAGES:-1024} --image-size 1120 --new-tokens 64 \
           --batches-in-flight 16 && python jobs/bench.py --model mllama-11b --images ${PIPE_IMAGES:-1024} --image-size 1120 \
           --new-tokens 64 --skip-hf' ;;
    onevision) part onevision 120 300 python jobs/bench.py --model onevision-7b --images 128 --image-size 768 \
        --new-tokens 64 $HF --hf-images 32 --hf-batch 8 --small-images 0 --json "$LOGS/onevision.json" ;;
    *) echo "unknown step $step (tests, tests-ov, mllama, mllama-batch, staged, onevision, probe, probe-ov, pipeline, gemv, b1-mllama, b1-onevision)"; exit 2 ;;
  esac
done
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$LOGS/summary.txt"
tar -C /tmp -czf "$OUT/results.tgz" bench_logs bench_traces
