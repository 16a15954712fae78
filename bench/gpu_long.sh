#!/usr/bin/env bash
# bench/gpu_long.sh OUTDIR [MINUTES1] [MINUTES2] -- issue 7's longer configuration as few, long trajectories on a
# lent GPU: each trajectory trains configs/demo_fmnist_gpu.toml through `fastui.train` in two stages (stage 2 resumes
# stage 1's final checkpoint with other hyperparameters, as the CPU runs of sessions 8-9 did by hand), then samples
# the demo's 300 evaluation draws through every EMA snapshot (bench.trajectory) for FID on a machine with the
# Inception file.
#
# Why two trajectories, not four variants (bench/gpu_distill.sh): on an H100 one process of this config runs 5.1
# iterations/s at batch 128 and four together 3.0 each with the GPU 100% busy (bench/results/iteration.csv,
# gpu_long_s10.csv), and what this config lacks is iterations of one trajectory. Stage 1 is the GPU config with the
# depth-4 discriminator head (better than depth 2 at batch 512 in session 9 and at batch 32 on the CPU); stage 2
# lowers the learning rates 4x and raises the GAN weight to 10 (the CPU trajectory's steps at 175k and 256k images,
# bench/results/cpu_long.csv). Trajectory `staged` is this recipe as it is.
#
# Session 12: trajectory `stagedrc` is the same recipe with a fresh, pre-trained discriminator head every 32,000
# images of stage 2 (discriminator.refresh_*: what bench/fork_head.py did by hand in session 9, the one change that
# moved the late plateau on the CPU), and compiled (`model.compile = true`): the iteration is host-bound on an H100
# (~8k dispatched operations, 5.1 it/s), which inductor's fused kernels should relieve; never measured on a GPU. The
# two run side by side from the start, so nothing is spent on a separate timing. Both switch to stage 2 at the same
# image count (B1 below), so at equal images (snapshots every 32,000) their FIDs compare the refresh (and compiled
# with eager numerics, which should not matter); their images per minute in stage 1 (log.csv, before any refresh)
# compare compiled with eager, compile time included (each stage start compiles again, from inductor's cache).
#
# Usage: bash bench/gpu_long.sh OUTDIR [MINUTES1] [MINUTES2]
#   Without MINUTES1/2 the stages share what is left of BUDGET_S (default 560 s, for a 600-second call) after the
#   set-up, 58:42, less 150 s for the stage start-ups, sampling and the tars.
#   SMOKE=1: tiny batch, fp32, a few seconds per stage, a refresh every iteration (8 images), no compile unless
#   SMOKE_COMPILE=1 (checks the chain on a CPU, where compiling this network takes minutes)
# Carry .whl/ (webdataset, braceexpand) and .carry/fmnist as for bench/gpu_distill.sh (its header says how).
# Then, where the Inception file is:  python -m bench.trajectory fid runs/gpu_long/<name>/samples.npz
set -u
OUTDIR=${1:?usage: bash bench/gpu_long.sh OUTDIR [MINUTES1] [MINUTES2]}
M1=${2:-}
M2=${3:-}
BUDGET_S=${BUDGET_S:-560}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 99
PY=${PYTHON:-python3}
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
ROOT=runs/gpu_long
mkdir -p $ROOT
exec > >(tee -a $ROOT/gpu_long.log) 2>&1
echo "gpu_long: $(date -u +%FT%TZ) git $(git rev-parse --short HEAD 2>/dev/null) minutes ${M1:-auto} + ${M2:-auto}"
DATA=$ROOT/shards
# shellcheck source=bench/gpu_env.sh
. bench/gpu_env.sh && gpu_env_setup $DATA
REFRESH="--discriminator.refresh_every_images=32000 --discriminator.refresh_steps=1500"
COMPILE=--model.compile=true
COMMON=(--config configs/demo_fmnist_gpu.toml --data.source=$DATA --run.out_dir=$ROOT --resume auto
        --loss.backend=torch --data.num_workers=2 --run.progress=false --run.log_every=50
        --run.snapshot_every_images=32000 --run.grid_every_images=0 --run.keep_last=1 --discriminator.depth=4)
if [ "${SMOKE:-0}" = 1 ]; then
  COMMON+=(--batch.global_size=8 --batch.micro=8 --engine.autocast_bf16=false --run.snapshot_every_images=16
           --data.num_workers=0)
  M1=0.15 M2=0.15
  REFRESH="--discriminator.refresh_every_images=8 --discriminator.refresh_steps=20 --discriminator.refresh_pool=64"
  [ "${SMOKE_COMPILE:-0}" = 1 ] || COMPILE=
fi
STAGE2=(--optim.lr_g=2.5e-5 --optim.lr_fake=7.5e-5 --loss.gan_weight=10)
gpu_watch $ROOT/nvidia_smi.log
if [ -z "$M1" ] || [ -z "$M2" ]; then  # minutes left, 58:42
  read -r M1 M2 <<< "$(awk -v left=$((BUDGET_S - SECONDS - 150)) \
    'BEGIN { m = (left > 120 ? left : 120) / 60; printf "%.2f %.2f", 0.58 * m, 0.42 * m }')"
fi
# Stage 1 ends at B1 images in both trajectories (or at M1 minutes, whichever comes first), so that both change their
# rates and GAN weight at the same image count: B1 assumes 400 images/s per process (session 10: 3.0 iterations/s of
# 128 with four processes on the H100), rounded down to a snapshot. Stage 2 runs to a common deadline, M1 + M2
# minutes from now: a trajectory that reaches B1 early (compiled, if compile pays) gets more stage-2 minutes.
B1=$(awk -v m="$M1" 'BEGIN { b = int(m * 60 * 400 / 32000) * 32000; print (b < 32000 ? 32000 : b) }')
[ "${SMOKE:-0}" = 1 ] && B1=16
DEADLINE=$(awk -v a="$M1" -v b="$M2" -v now="$(date +%s)" 'BEGIN { printf "%d", now + (a + b) * 60 }')
echo "stages: $M1 + $M2 minutes ($SECONDS s used of $BUDGET_S); stage 1 ends at $B1 images"
# name | stage-2 extra overrides | overrides of both stages
TRAJ=("staged||" "stagedrc|$REFRESH|$COMPILE")
run_traj() {  # name, stage-2 extras, extras of both: stage 1, then stage 2 resumed from stage 1's final checkpoint
  local name=$1 extra=$2 both=$3
  # shellcheck disable=SC2086
  "$PY" -m fastui.train "${COMMON[@]}" $both --run.name="$name" --run.duration_images="$B1" \
    --run.max_minutes="$M1" || return 1
  local left
  left=$(awk -v d="$DEADLINE" -v now="$(date +%s)" 'BEGIN { m = (d - now) / 60; printf "%.2f", (m > 0.1 ? m : 0.1) }')
  # shellcheck disable=SC2086
  "$PY" -m fastui.train "${COMMON[@]}" "${STAGE2[@]}" $extra $both --run.name="$name" --run.max_minutes="$left"
}
pids=()
for t in "${TRAJ[@]}"; do
  IFS='|' read -r name extra both <<< "$t"
  rm -rf "${ROOT:?}/$name"  # a warm machine keeps runs/: no checkpoint of an earlier call may be resumed
  run_traj "$name" "$extra" "$both" > $ROOT/$name.log 2>&1 &
  pids+=($!)
  echo "started $name (pid $!): both stages $both; stage 2 ${STAGE2[*]} $extra"
done
gpu_wait_all $ROOT/nvidia_smi.log "${pids[@]}"
for t in "${TRAJ[@]}"; do
  name=${t%%|*}
  grep -h "resumed\|images/s\|fresh discriminator\|Error\|error" $ROOT/$name.log | tail -n 6
  "$PY" -m bench.trajectory sample $ROOT/$name --out $ROOT/$name/samples.npz | tail -n 1
  tar -cf "$OUTDIR/$name.tar" -C $ROOT $name.log $name/samples.npz $name/log.csv $name/config.json \
    $name/generator_ema 2>&1 | head -n 3
done
tar -rf "$OUTDIR/${TRAJ[0]%%|*}.tar" -C $ROOT gpu_long.log
ls -la "$OUTDIR"
