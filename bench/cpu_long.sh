#!/usr/bin/env bash
# bench/cpu_long.sh MINUTES [NAME] -- issue 7's longer configuration as one trajectory on the CPU that many sessions
# continue: each call resumes the newest checkpoint of runs/cpu_long/NAME (default `refresh`) for MINUTES of wall
# time, in the stage its image count is in, so that no session has to remember what the last one ran:
#
#   stage 1, to 175,000 images: configs/demo_fmnist_gpu.toml (batch 128, GAN weight 3, EMA 50k) with the depth-4
#            discriminator head (better than depth 2 on the GPU at batch 512 and on the CPU at batch 32)
#   stage 2, to 256,000: both learning rates / 4 (the CPU trajectory's step at 175k, bench/results/cpu_long.csv)
#   stage 3, to 320,000: + GAN weight 10 (its step at 256k) + a fresh, pre-trained head every 32,000 images from
#            288,000 on (discriminator.refresh_*; by hand in session 9 it was the one change that moved the plateau)
#   stage 4, to 1,000,000: a fresh head every 16,000 images (336k, 352k, ...): the head of 288k was blind again
#            (L_disc back to ~1.40) and the FID flat from ~15k images after it (session 16)
#
# MINUTES may be fractional; the run stops at the first iteration past it, then finishes that iteration (and a refresh
# due there: ~2 minutes in fp32 here), its checkpoint and its export, so leave a few minutes' margin.
# EMA snapshots every 16,000 images (runs/cpu_long/NAME/snapshots/); checkpoints every 8,000 (the last two kept), so
# a session that ends mid-stage loses at most ~8,000 images. bf16 autocast where the CPU has native bf16 (AMX /
# AVX512-BF16), fp32 elsewhere (the same maths; fp32 on a 2-core AMD EPYC: ~13 s per iteration of 128).
# Score what is new (FID n = 300, the demo's draws; rows in bench/results/cpu_long.csv):
#   python -m bench.score_snapshots runs/cpu_long/refresh --csv bench/results/cpu_long.csv --variant cpu_long_refresh \
#       --config configs/demo_fmnist_gpu.toml --overrides "see bench/cpu_long.sh"
# Data: $DATA, else runs/demo/shards (what `make demo` writes), else written here from the Debian package.
# CPU_LONG_ROOT: another directory for the runs (default runs/cpu_long). CPU_LONG_EXTRA: more fastui.train overrides
# for every stage (bench/gpu_continue.sh: the GPU's logging, loss backend and loader workers). CPU_LONG_END: where
# stage 4 ends (images; default 1,000,000); CPU_LONG_STAGE4: more overrides for stage 4 only, e.g. a decay of the rates
# to the end instead of the constant rate after which session 19's trajectory drifted up (session 21):
#   CPU_LONG_END=448000 CPU_LONG_STAGE4="--optim.lr_decay_start=0.75 --optim.lr_decay_final=0.1" \
#       bash bench/cpu_long.sh 60 decay     # a new trajectory, runs/cpu_long/decay
# (the fraction is of the stage's run.duration_images, CPU_LONG_END: 0.75 x 448,000 = 336,000 images on).
# The first call that trains saves the two in runs/cpu_long/NAME/cpu_long.plan; later calls take them from there, so
# that a trajectory keeps its plan when a later call forgets them, and refuse (exit 2, nothing run) a value that
# differs from the saved one (remove the file to change the plan).
# DRY=1 prints the command of the current stage and exits; SMOKE=1 runs the stages on tiny numbers (batch 8).
set -u
MINUTES=${1:?usage: bash bench/cpu_long.sh MINUTES [NAME]}
NAME=${2:-refresh}
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 99
PY=${PYTHON:-.venv/bin/python}
ROOT=${CPU_LONG_ROOT:-runs/cpu_long}
RUN=$ROOT/$NAME
# the deadline, in seconds since the epoch (MINUTES may be fractional); the shards below count against it
END=$(awk -v m="$MINUTES" -v now="$(date +%s)" \
  'BEGIN { if (m !~ /^[0-9]*\.?[0-9]+$/) exit 1; printf "%d", now + m * 60 }') || { echo "cpu_long: MINUTES must be a number, got $MINUTES" >&2; exit 2; }
B1=175000 B2=256000 B3=320000 B4=1000000 EVERY=32000 EVERY4=16000 SNAP=16000 CKPT=8000 BATCH=()
if [ "${SMOKE:-0}" = 1 ]; then  # the stage logic on tiny numbers: batch 8, stages end at 16 / 32 / 48 / 64 images
  B1=16 B2=32 B3=48 B4=64 EVERY=16 EVERY4=8 SNAP=8 CKPT=8 BATCH=(--batch.global_size=8 --batch.micro=8
    --discriminator.refresh_steps=5 --discriminator.refresh_pool=16 --discriminator.refresh_batch=8)
fi
PLAN=$RUN/cpu_long.plan
if [ -f "$PLAN" ]; then
  SAVED_END=$(sed -n 's/^end=//p' "$PLAN") SAVED_LAST=$(sed -n 's/^stage4=//p' "$PLAN")
  if { [ -n "${CPU_LONG_END:-}" ] && [ "$CPU_LONG_END" != "$SAVED_END" ]; } ||
     { [ -n "${CPU_LONG_STAGE4:-}" ] && [ "$CPU_LONG_STAGE4" != "$SAVED_LAST" ]; }; then
    echo "cpu_long: $RUN was started with CPU_LONG_END='$SAVED_END' CPU_LONG_STAGE4='$SAVED_LAST' (saved in $PLAN)," \
      "got CPU_LONG_END='${CPU_LONG_END:-}' CPU_LONG_STAGE4='${CPU_LONG_STAGE4:-}': give the same values or none" \
      "(remove $PLAN to change the plan)" >&2; exit 2
  fi
  CPU_LONG_END=$SAVED_END CPU_LONG_STAGE4=$SAVED_LAST
  echo "cpu_long: the saved plan ($PLAN) ends stage 4 at ${SAVED_END:-the default} images, its overrides" \
    "'$SAVED_LAST'"
fi
if [ -n "${CPU_LONG_END:-}" ]; then
  [[ "$CPU_LONG_END" =~ ^[0-9]+$ ]] && [ "$CPU_LONG_END" -gt $B3 ] || {
    echo "cpu_long: CPU_LONG_END must be a whole number of images past stage 3's end ($B3)," \
      "got $CPU_LONG_END" >&2; exit 2; }
  B4=$CPU_LONG_END
fi
DATA=${DATA:-runs/demo/shards}
if [ ! -f "$DATA/manifest.json" ]; then
  DATA=$ROOT/shards
  [ -f "$DATA/manifest.json" ] || [ "${DRY:-0}" = 1 ] || "$PY" -m fastui.data.cli fashion-mnist \
    --root /usr/share/datasets/fashion-mnist --out "$DATA" --pad-to 32 --workers 2 || exit 97
fi
# BF16=true|false overrides (a lent GPU: bench/gpu_continue.sh)
BF16=${BF16:-$("$PY" -c "from fastui.cpu import native_bf16; print(str(native_bf16()).lower())")} || exit 98
ckpt_state() {  # "IMAGES MOVED" of the newest complete checkpoint ("0 false" when none); MOVED is true when its data
  # position is on other shards than $DATA (a pack moved between machines: bench/gpu_continue.sh), which restarts it
  "$PY" - "$RUN/checkpoints" "$DATA/manifest.json" <<'PYEOF'
import json, sys
from pathlib import Path
import torch
from fastui.train.checkpoint import find_latest
p, m = find_latest(Path(sys.argv[1])), Path(sys.argv[2])
images = json.loads((p / "meta.json").read_text())["images"] if p else 0
saved = torch.load(p / "rank00000.pt", map_location="cpu", weights_only=False).get("data") if p else None
now = json.loads(m.read_text())["num_shards"] if m.is_file() else None
print(images, str(saved is not None and now is not None and saved["num_shards"] != now).lower())
PYEOF
}
read -r -a MORE <<< "${CPU_LONG_EXTRA:-}"
read -r -a LAST <<< "${CPU_LONG_STAGE4:-}"
STAGE2=(--optim.lr_g=2.5e-5 --optim.lr_fake=7.5e-5)
while :; do
  STATE=$(ckpt_state) || exit 96
  read -r DONE MOVED <<< "$STATE"
  LEFT_S=$((END - $(date +%s)))
  LEFT=$(awk -v s=$LEFT_S 'BEGIN { printf "%.2f", s / 60 }')
  COMMON=(--config configs/demo_fmnist_gpu.toml --data.source="$DATA" --resume auto --run.out_dir=$ROOT
          --run.name="$NAME" --discriminator.depth=4 --engine.autocast_bf16="$BF16" --run.progress=false
          --run.log_every=10 --run.snapshot_every_images=$SNAP --run.ckpt_every_images=$CKPT --run.keep_last=2
          --run.grid_every_images=0 --run.max_minutes="$LEFT" "${BATCH[@]}" "${MORE[@]}")
  if [ "$DONE" -lt $B1 ]; then
    STAGE=1 EXTRA=(--run.duration_images=$B1)
  elif [ "$DONE" -lt $B2 ]; then
    STAGE=2 EXTRA=("${STAGE2[@]}" --run.duration_images=$B2)
  elif [ "$DONE" -lt $B4 ]; then  # stages 3 and 4 differ only in how often a fresh head comes, and where they end
    if [ "$DONE" -lt $B3 ]; then STAGE=3 UNTIL=$B3 HEADS=$EVERY; else STAGE=4 UNTIL=$B4 HEADS=$EVERY4; fi
    EXTRA=("${STAGE2[@]}" --loss.gan_weight=10 --discriminator.refresh_every_images=$HEADS
           --discriminator.refresh_start_images=$B2 --run.duration_images=$UNTIL)
    [ $STAGE = 4 ] && EXTRA+=("${LAST[@]}")
  else
    echo "cpu_long: $RUN is done ($DONE images)"; exit 0
  fi
  [ "$MOVED" = true ] && EXTRA+=(--data.resume_position=false)
  echo "cpu_long: $(date -u +%FT%TZ) git $(git rev-parse --short HEAD 2>/dev/null) $RUN at $DONE images: stage" \
    "$STAGE for up to $LEFT minutes (bf16 $BF16$([ "$MOVED" = true ] && echo ", other shards: data stream restarted"))"
  if [ "${DRY:-0}" = 1 ]; then echo "$PY" -m fastui.train "${COMMON[@]}" "${EXTRA[@]}"; exit 0; fi
  [ $LEFT_S -ge 30 ] || { echo "cpu_long: less than 30 s left"; exit 0; }
  mkdir -p "$RUN"
  [ -f "$PLAN" ] || printf 'end=%s\nstage4=%s\n' "${CPU_LONG_END:-}" "${CPU_LONG_STAGE4:-}" > "$PLAN" || exit 95
  "$PY" -m fastui.train "${COMMON[@]}" "${EXTRA[@]}" || exit $?
  STATE=$(ckpt_state) || exit 96
  [ "${STATE%% *}" = "$DONE" ] && exit 0  # no progress: out of time
done
