#!/usr/bin/env bash
# bench/gpu_continue.sh OUTDIR [MINUTES] -- continue issue 7's CPU trajectory (bench/cpu_long.sh, runs/cpu_long/refresh)
# on a lent GPU and hand it back, instead of starting another trajectory there (bench/gpu_long.sh): the longer
# configuration needs ~400k+ images of one trajectory, a CPU session makes ~60k of them (~10 images/s in fp32 on an
# AMD EPYC) and an H100 ~650 images/s (one process, batch 128, bf16: bench/results/iteration.csv).
#
# Here, first (the pack is the trajectory's newest checkpoint, ~24 MB, and the first 20,000 Fashion-MNIST training
# images, ~7.5 MB; with the tracked files that is ~58 of the 64 MiB a call may carry):
#   rm -rf .carry/cont && .venv/bin/python -m bench.carry_run pack runs/cpu_long/refresh .carry/cont \
#       --fmnist /usr/share/datasets/fashion-mnist
# There (device tool: carry [".carry/cont", ".whl"], timeout_s 600; .whl as bench/gpu_distill.sh's header says):
#   bash bench/gpu_continue.sh $OUT
# Back here (FILES = the reply's files_at):
#   .venv/bin/python -m bench.carry_run unpack FILES/ckpt runs/cpu_long/refresh     # the next CPU session resumes it
#   mkdir -p runs/gpu_cont && tar -xf FILES/cont.tar -C runs/gpu_cont
#   .venv/bin/python -m bench.trajectory fid runs/gpu_cont/samples.npz               # FID of the GPU's snapshots
#
# What it does there: installs the carried wheels, writes the 20,000 images as shards, unpacks the checkpoint into
# runs/gpu_cont/refresh (never runs/cpu_long: a smoke run here must not touch the trajectory), runs
# `bash bench/cpu_long.sh` on it with bf16 autocast (the same stages as on the CPU, picked by image count; other shards
# than the checkpoint's, so its data stream restarts once), samples the demo's 300 evaluation draws through every EMA
# snapshot it made, and packs the newest checkpoint into OUTDIR/ckpt (parts of at most 15 MiB: the tool returns at
# most 16 MiB a file) and the logs and samples into OUTDIR/cont.tar. If the continuation fails before its first
# checkpoint with more than 200 s of the budget left, bench/gpu_long.sh runs from scratch in what is left (its own
# tars, also in OUTDIR); one that fails later returns what it made.
# Without MINUTES the training gets what is left of BUDGET_S (default 560 s, for a 600-second call) after the set-up,
# less 100 s for the sampling and the packing. SMOKE=1 (passed on to cpu_long.sh: batch 8, tiny stages) checks the
# chain on a CPU with a tiny pack (tests/test_bench_gpu_continue.py).
set -u
OUTDIR=${1:?usage: bash bench/gpu_continue.sh OUTDIR [MINUTES]}
MINUTES=${2:-}
BUDGET_S=${BUDGET_S:-560}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 99
PY=${PYTHON:-python3}
export PYTHON=$PY PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
CARRY=${CARRY:-.carry/cont}
ROOT=${GPU_CONT_ROOT:-runs/gpu_cont}
RUN=$ROOT/refresh
mkdir -p "$ROOT"
exec > >(tee -a "$ROOT/gpu_continue.log") 2>&1
echo "gpu_continue: $(date -u +%FT%TZ) git $(git rev-parse --short HEAD 2>/dev/null) pack $CARRY"
[ -f "$CARRY/manifest.json" ] || { echo "gpu_continue: no pack in $CARRY (see this script's header)"; exit 95; }
# shellcheck source=bench/gpu_env.sh
. bench/gpu_env.sh && gpu_env_setup "$ROOT/shards" "$CARRY/fmnist"
rm -rf "${RUN:?}" "$ROOT/samples.npz"  # a warm machine keeps runs/: only the pack may be resumed
"$PY" -m bench.carry_run unpack "$CARRY" "$RUN" || exit 94
START=$(ls "$RUN/checkpoints")
BF16=${BF16:-$("$PY" -c "import torch; print(str(torch.cuda.is_available()).lower())")}
if [ -z "$MINUTES" ]; then
  MINUTES=$(awk -v left=$((BUDGET_S - SECONDS - 100)) 'BEGIN { printf "%.2f", (left > 30 ? left : 30) / 60 }')
fi
echo "gpu_continue: training for $MINUTES minutes (bf16 $BF16), $SECONDS s used of $BUDGET_S"
gpu_watch "$ROOT/nvidia_smi.log"
CPU_LONG_ROOT=$ROOT DATA=$ROOT/shards BF16=$BF16 bash bench/cpu_long.sh "$MINUTES" refresh
rc=$?
kill "$GPU_WATCH_PID" 2>/dev/null
echo "gpu_continue: cpu_long.sh exit $rc after $SECONDS s; GPU memory used, utilisation (every 20 s):"
cat "$ROOT/nvidia_smi.log"
"$PY" -m bench.trajectory sample "$RUN" --out "$ROOT/samples.npz" | tail -n 1
rm -rf "$OUTDIR/ckpt"
"$PY" -m bench.carry_run pack "$RUN" "$OUTDIR/ckpt"
files=(gpu_continue.log refresh/log.csv refresh/config.json)
[ -f "$ROOT/samples.npz" ] && files+=(samples.npz)
[ -f "$ROOT/nvidia_smi.log" ] && files+=(nvidia_smi.log)
tar -cf "$OUTDIR/cont.tar" -C "$ROOT" "${files[@]}"
# a continuation that failed before its first checkpoint leaves the GPU's minutes to a trajectory from scratch
if [ $rc -ne 0 ] && [ "$(ls "$RUN/checkpoints")" = "$START" ] && [ $((BUDGET_S - SECONDS)) -gt 200 ] \
    && [ "${SMOKE:-0}" != 1 ]; then
  echo "gpu_continue: the continuation failed at its start; bench/gpu_long.sh from scratch in the" \
    "$((BUDGET_S - SECONDS)) s left"
  BUDGET_S=$((BUDGET_S - SECONDS)) bash bench/gpu_long.sh "$OUTDIR"
fi
ls -la "$OUTDIR" "$OUTDIR/ckpt"
exit $rc
