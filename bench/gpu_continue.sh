#!/usr/bin/env bash
# bench/gpu_continue.sh OUTDIR [MINUTES] -- continue issue 7's CPU trajectory (bench/cpu_long.sh, runs/cpu_long/refresh)
# on a lent GPU and hand it back, instead of starting another trajectory there (bench/gpu_long.sh): the longer
# configuration needs ~400k+ images of one trajectory, a CPU session makes ~60k of them (~10 images/s in fp32 on an
# AMD EPYC) and an H100 ~650 images/s (one process, batch 128, bf16: bench/results/iteration.csv).
#
# Here, first, with bench/cpu_long.sh stopped (and not started again until the GPU's pack is back: carry_run refuses
# a pack that does not continue the run's newest checkpoint). The pack is the trajectory's newest checkpoint, ~24 MB,
# and the first 20,000 Fashion-MNIST training images, ~7.5 MB; with the tracked files, ~57 MB = 55 MiB of the 64 MiB
# a call may carry:
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
# `bash bench/cpu_long.sh` on it with bf16 autocast and the GPU settings of bench/gpu_long.sh (the torch loss backend,
# two loader workers, a log row every 50 iterations; the stages are the CPU's, picked by image count; other shards
# than the checkpoint's, so its data stream restarts once), samples the demo's 300 evaluation draws through every
# EMA snapshot it made, and packs the newest checkpoint into OUTDIR/ckpt (parts of at most 15 MiB: the tool returns at
# most 16 MiB a file) and the logs and samples into OUTDIR/cont.tar. If the continuation fails before its first
# checkpoint with more than 320 s of the budget left, bench/gpu_long.sh runs from scratch in what is left, on the same
# 20,000 images (its own tars, also in OUTDIR); one that fails later returns what it made. Exit status: cpu_long.sh's,
# else 93 when the pack failed. CPU_LONG_END and CPU_LONG_STAGE4 pass on to cpu_long.sh (stage 4 to a set end with
# overrides of its own, e.g. its rates decaying to that end: cpu_long.sh's header); a pack of a run that has them saved
# (its cpu_long.plan) brings them along, so that they need not be given again (given, they must match). A run directory
# that holds only a plan packs without a checkpoint, and the trajectory then starts there, from the teacher (session 23:
# runs/ did not survive a change of machine, so a GPU session may have no checkpoint to continue):
#   mkdir -p runs/cpu_long/decay && printf 'end=%s\nstage4=%s\n' 448000 \
#       "--optim.lr_decay_start=0.75 --optim.lr_decay_final=0.1" > runs/cpu_long/decay/cpu_long.plan
#   rm -rf .carry/cont && .venv/bin/python -m bench.carry_run pack runs/cpu_long/decay .carry/cont \
#       --fmnist /usr/share/datasets/fashion-mnist
# Without MINUTES the training gets what is left of BUDGET_S (default 560 s, for a 600-second call) after the set-up,
# less 100 s for the sampling and the packing. When the session has less device time left than a whole call, set
# BUDGET_S to status's budget_left_s less the machine's start (~90 s) and 40 s: a call cut off before the pack returns
# nothing. SMOKE=1 (passed on to cpu_long.sh: batch 8, tiny stages) checks the chain on a CPU with a tiny pack
# (tests/test_bench_gpu_continue.py).
# Measured (session 19, an H200): 4,224 -> 241,024 images in 482 s of training (~570-700 images/s, the GPU 22-46%
# busy: host-bound). Device time left after the call (~350 s of 900) buys a second call while the machine is still
# warm (it goes back after 30 s idle), continuing runs/gpu_cont/refresh there without a new pack (session 19: 241,024
# -> 320,000 images in 182 s):
#   R=runs/gpu_cont; export PYTHON=python3 PYTHONPATH=$PWD:/tmp/site; CPU_LONG_ROOT=$R DATA=$R/shards BF16=true \
#     CPU_LONG_EXTRA="--loss.backend=torch --data.num_workers=2 --run.log_every=50" bash bench/cpu_long.sh 3.1 refresh
#   python3 -m bench.carry_run pack $R/refresh $OUT/ckpt       # timeout_s 300
# Back here unpack the first call's ckpt/, then the second's (it goes on from the first: its manifest lists the first
# pack's id, and the checkpoint unpacked from that pack keeps it; no --force since session 20).
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
if [ ! -f "$CARRY/manifest.json" ] || [ ! -d "$CARRY/fmnist" ]; then
  echo "gpu_continue: no pack with images in $CARRY (see this script's header)"; exit 95
fi
rm -rf "${RUN:?}" "$ROOT/shards" "$ROOT/samples.npz"  # a warm machine keeps runs/: only this pack may be used
# shellcheck source=bench/gpu_env.sh
. bench/gpu_env.sh && gpu_env_setup "$ROOT/shards" "$CARRY/fmnist"
"$PY" -m bench.carry_run unpack "$CARRY" "$RUN" || exit 94
START=$(ls "$RUN/checkpoints" 2>/dev/null)  # empty for a pack without a checkpoint: the trajectory starts here
BF16=${BF16:-$("$PY" -c "import torch; print(str(torch.cuda.is_available()).lower())")}
if [ -z "$MINUTES" ]; then
  MINUTES=$(awk -v left=$((BUDGET_S - SECONDS - 100)) 'BEGIN { printf "%.2f", (left > 30 ? left : 30) / 60 }')
fi
echo "gpu_continue: training for $MINUTES minutes (bf16 $BF16), $SECONDS s used of $BUDGET_S"
gpu_watch "$ROOT/nvidia_smi.log"
EXTRA="--loss.backend=torch --data.num_workers=2 --run.log_every=50"
[ "${SMOKE:-0}" = 1 ] && EXTRA="--loss.backend=torch"
CPU_LONG_ROOT=$ROOT DATA=$ROOT/shards BF16=$BF16 CPU_LONG_EXTRA=$EXTRA bash bench/cpu_long.sh "$MINUTES" refresh
rc=$?
kill "$GPU_WATCH_PID" 2>/dev/null
echo "gpu_continue: cpu_long.sh exit $rc after $SECONDS s; GPU memory used, utilisation (every 20 s):"
cat "$ROOT/nvidia_smi.log"
files=(gpu_continue.log)
if [ "$(ls "$RUN/checkpoints" 2>/dev/null)" != "$START" ]; then
  "$PY" -m bench.trajectory sample "$RUN" --out "$ROOT/samples.npz" | tail -n 1
  rm -rf "$OUTDIR/ckpt"
  "$PY" -m bench.carry_run pack "$RUN" "$OUTDIR/ckpt" || { echo "gpu_continue: the pack failed"; [ $rc -ne 0 ] || rc=93; }
elif [ $rc -ne 0 ] && [ $((BUDGET_S - SECONDS)) -gt 320 ] && [ "${SMOKE:-0}" != 1 ]; then
  echo "gpu_continue: the continuation failed at its start; bench/gpu_long.sh from scratch on the same images in" \
    "the $((BUDGET_S - SECONDS)) s left"
  mkdir -p runs/gpu_long && rm -rf runs/gpu_long/shards && ln -s "$PWD/$ROOT/shards" runs/gpu_long/shards
  BUDGET_S=$((BUDGET_S - SECONDS)) bash bench/gpu_long.sh "$OUTDIR"
fi
for f in refresh/log.csv refresh/config.json samples.npz nvidia_smi.log; do [ -f "$ROOT/$f" ] && files+=("$f"); done
tar -cf "$OUTDIR/cont.tar" -C "$ROOT" "${files[@]}"
ls -la "$OUTDIR" "$OUTDIR"/ckpt 2>/dev/null
exit $rc
