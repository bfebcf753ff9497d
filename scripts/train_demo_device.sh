#!/usr/bin/env bash
# Train demo/model on one lent H200 in two `run` calls (<= 600 s each), the weights coming back through $OUT.
# The trainer's defaults are the shipped recipe (scripts/train_demo_model.py); extra arguments pass through.
# Carry .devdata (../shared/checkpoints xz-packed as ckpt.tar.xz, and the easy-vqa wheel):
#   mkdir -p .devdata && tar -C ../shared -cJf .devdata/ckpt.tar.xz checkpoints
#   pip download easy-vqa==1.0 --no-deps -d .devdata        # data only: 64x64 PNGs + questions.json
# run(kind="nvidia-h200", carry=[".devdata"], command="BUDGET=420 SCHEDULE=840 bash scripts/train_demo_device.sh --eval-scenes 0")
# A fresh machine keeps nothing, so copy the returned model.part*, progress.json and config.json to
# .devdata/resume/ and continue the same schedule (with the 23.6 MB parts carried, move
# demo/model/model.safetensors aside for the call: the tree + carry must stay under 64 MiB):
# run(..., command="BUDGET=420 SCHEDULE=840 bash scripts/train_demo_device.sh --eval-scenes 0 --resume .devdata/resume")
# Then, here:  python scripts/train_demo_model.py --from-parts <files_at> --out demo/model
# The shipped weights ran so (2026-12-01, session 9) on one nvidia-h200: each call ~440 s of device time, 30 min
# allow the two calls and ~6 min of timing runs. --eval-scenes 0 saves the end-of-run check's device time (run
# it on the CPU afterwards; demo/model/README.md).
# Every --log-every line splits the step: data wait, h2d/fwd/bwd/opt on the GPU timeline (CUDA events, no
# extra syncs), the host's issue time per phase, and examples/s.
# PROFILE=1 first profiles 3 steps ($OUT/profile.log). AB="..." runs an A/B on two GPUs (below).
# $OUT gets model.part0/1 (<= 15 MiB each: the device returns files of at most 16 MiB, and the tied
# embedding alone is 19.5 MB), progress.json, config.json, training.json and train.log; parts are rewritten
# every --save-every-s, so a call cut short still returns the last checkpoint.
set -euo pipefail
R=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p /tmp/vshared /tmp/evqa
tar -C /tmp/vshared -xJf "$R/.devdata/ckpt.tar.xz"
(cd /tmp/evqa && python3 -m zipfile -e "$(ls "$R"/.devdata/easy_vqa-*.whl | head -1)" .)
export PYTHONUNBUFFERED=1
ARGS=(--out /tmp/demo_model --shared /tmp/vshared/checkpoints --easy-vqa-dir /tmp/evqa/easy_vqa/data)
if [ -n "${PROFILE:-}" ]; then
  python3 "$R/scripts/train_demo_model.py" "${ARGS[@]}" --profile-steps 3 "$@" 2>&1 | grep -v Warning > "$OUT/profile.log"
fi
RUN=(--time-budget-s "${BUDGET:-420}" --schedule-s "${SCHEDULE:-${BUDGET:-420}}" --save-every-s 90 --eval-scenes 60
     --log-every 100)
if [ -z "${AB:-}" ]; then
  python3 "$R/scripts/train_demo_model.py" "${ARGS[@]}" --export-dir "$OUT" "${RUN[@]}" "$@" 2>&1 \
    | grep --line-buffered -v Warning | tee "$OUT/train.log"
  exit 0
fi
# AB="--cell-loss-weight 0" on an nvidia-h200-x2: two runs side by side, $OUT/a on GPU 0 with the arguments as
# given, $OUT/b on GPU 1 with $AB added (14 data workers each). RESUME_AB=DIR continues DIR/a and DIR/b. Each
# returns model.part0/1 and small.tgz (progress.json, config.json, training.json, train.log and, with a cell
# loss, cell_head.safetensors, which --resume reads): 6 files in all,
# under the 8 a call brings back. The weights of both (47 MB) fit a call's carry only with demo/model's
# safetensors and .devdata's other archives moved aside.
one() {
  local gpu=$1 v=$2; shift 2
  mkdir -p "$OUT/$v"
  CUDA_VISIBLE_DEVICES=$gpu python3 "$R/scripts/train_demo_model.py" --out "/tmp/demo_model_$v" "${ARGS[@]:2}" \
    --export-dir "$OUT/$v" "${RUN[@]}" ${RESUME_AB:+--resume "$RESUME_AB/$v"} "$@" 2>&1 | grep -v Warning \
    > "$OUT/$v/train.log" || echo "run $v failed: see $OUT/$v/train.log"
  tar -C "$OUT/$v" -czf "$OUT/$v/small.tgz" --remove-files $(cd "$OUT/$v" && ls progress.json config.json \
    training.json train.log cell_head.safetensors 2>/dev/null)
}
# shellcheck disable=SC2086  # $AB is a list of arguments
one 0 a "$@" & one 1 b "$@" $AB & wait
for v in a b; do tar -xzOf "$OUT/$v/small.tgz" train.log | tail -4 | sed "s/^/[$v] /"; done
