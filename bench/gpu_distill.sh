#!/usr/bin/env bash
# bench/gpu_distill.sh OUTDIR [MINUTES] -- the longer Fashion-MNIST configuration on a lent GPU (issue 7's headline).
#
# Runs configs/demo_fmnist_gpu.toml through `fastui demo` in several variants at once on one GPU (the demo network is
# tiny, so one process leaves the GPU mostly idle), each for MINUTES of training (default 7), with EMA snapshots
# (every 64,000 images at batch 128); then samples the demo's 300 evaluation draws through every snapshot
# (bench.trajectory) so the FID can be computed on a machine that has the Inception file. Needs no network: carry
# .whl/ (webdataset, braceexpand) and .carry/fmnist (the four Fashion-MNIST IDX files). OUTDIR gets one tar per
# variant (final EMA generator, samples .npz, log.csv, grid, demo output; the first also gpu_distill.log): at most
# 8 files, each under 16 MiB, come back from a lent machine.
#
# Usage: bash bench/gpu_distill.sh OUTDIR [MINUTES]          (SMOKE=1: first variant only, 20 iterations)
# What to carry (both git-ignored), made once on the development machine:
#   mkdir -p .carry/fmnist && cp /usr/share/datasets/fashion-mnist/*.gz .carry/fmnist/
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl webdataset==1.0.2 braceexpand
# Then, where the Inception file is:  python -m bench.trajectory fid runs/gpu/<variant>/samples.npz
set -u
OUTDIR=${1:?usage: bash bench/gpu_distill.sh OUTDIR [MINUTES]}
MINUTES=${2:-7}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 99
PY=${PYTHON:-python3}
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p runs/gpu
exec > >(tee -a runs/gpu/gpu_distill.log) 2>&1
echo "gpu_distill: $(date -u +%FT%TZ) git $(git rev-parse --short HEAD 2>/dev/null) minutes $MINUTES"
DATA=runs/gpu/shards
# shellcheck source=bench/gpu_env.sh
. bench/gpu_env.sh && gpu_env_setup $DATA
CFG=configs/demo_fmnist_gpu.toml
COMMON=(--config $CFG --minutes "$MINUTES" --skip-fid --no-progress --snapshot-every 64000 --data $DATA
        --set loss.backend=torch --set data.num_workers=2)
# name | extra overrides. Session 4 ran configs/demo_fmnist_long.toml as b32 and the variants b128 (EMA 20k),
# b128g10 (EMA 20k, gan_weight 10) and b128g3e50 (= configs/demo_fmnist_gpu.toml, the best: 65.7 at 162k images).
# An iteration costs ~0.35 s almost whatever the batch, so the next variants raise the batch (lr x2 with batch x4-8),
# and one tries torch.compile (fewer, fused kernels; its compile time counts against the minutes). Session 5: the
# default conv head (depth 2, 7x7-pixel patches) tells the b128g3e50 generator's samples from real images 60-66% of
# the time at sigma < 0.3 after 3000 Adam steps, a depth-4 head 72-75% (bench.disc_probe,
# bench/results/longer_config.md, "On the CPU"); on the CPU depth 4 was ~1 FID point better at 16k-62k images: gpud4
# tries the deeper head.
# Session 9 ran batch 512/1024 (lr x2; GAN weight 10; depth-4 head), four at once with two loader workers each (one
# process holds ~30 MB per image of a micro-batch, so at most ~4 x 512 fit in an H100's 78 GiB): the GPU was 100%
# busy, ~490 images/s per process, and at ~236k images they scored 78.8 / 84.9 (b1024) / 75.4 (GAN 10) / 72.1
# (depth 4) against 65.7 for batch 128 at 162k (bench/results/gpu_long_s9.csv): this config needs iterations, not
# images. So the variants are back at batch 128 (CPU-bound, ~2.5 it/s each), with the depth-4 head that won at 512.
# Session 10: on the CPU the session-8/9 GAN-10 arms' discriminator heads went blind (loss_disc at chance, 1.386)
# while the fake score's learning rate was 7.5e-5; discriminator.lr gives the conv head its own Adam group: d4g10 is
# the control, h1/h3 the head at 1e-3 / 3e-3, h1c128 the first with a head twice as wide. Run in session 10 (commit
# bb3a813, 8 minutes, ~187k images each): 68.38 / 69.44 / diverged (223) / 69.72 (bench/results/gpu_long_s10.csv);
# the engine's iteration now dispatches 7,982 operations instead of 12,309 (one gradient-guard pass per optimizer
# step instead of a hook on every parameter; bench/results/iteration.csv), and four processes run 3.0 iterations/s
# each with the GPU 100% busy. For a few long trajectories instead of several short ones: bench/gpu_long.sh.
VARIANTS=(
  "d4g10h1|--set discriminator.depth=4 --set loss.gan_weight=10 --set discriminator.lr=1e-3"
  "d4g10|--set discriminator.depth=4 --set loss.gan_weight=10"
  "d4g10h3|--set discriminator.depth=4 --set loss.gan_weight=10 --set discriminator.lr=3e-3"
  "d4g10h1c128|--set discriminator.depth=4 --set loss.gan_weight=10 --set discriminator.lr=1e-3 --set discriminator.channels=128"
)
[ "${SMOKE:-0}" = 1 ] && VARIANTS=("${VARIANTS[0]}") && COMMON+=(--iterations 20)
gpu_watch runs/gpu/nvidia_smi.log
pids=()
for v in "${VARIANTS[@]}"; do
  name=${v%%|*}; extra=${v#*|}
  rm -rf "runs/gpu/$name"  # a warm machine keeps runs/: no snapshot of an earlier call may join this trajectory
  # shellcheck disable=SC2086
  "$PY" -m fastui.demo "${COMMON[@]}" $extra --out runs/gpu/$name --threads 1 > runs/gpu/$name.log 2>&1 &
  pids+=($!)
  echo "started $name (pid $!): $extra"
done
gpu_wait_all runs/gpu/nvidia_smi.log "${pids[@]}"
for v in "${VARIANTS[@]}"; do
  name=${v%%|*}
  tail -n 3 runs/gpu/$name.log
  "$PY" -m bench.trajectory sample runs/gpu/$name --out runs/gpu/$name/samples.npz | tail -n 1
  cp runs/gpu/$name.log runs/gpu/$name/demo.log
  tar -cf "$OUTDIR/$name.tar" -C runs/gpu $name/samples.npz $name/demo.log $name/distill/log.csv $name/grid.png \
    $name/results.md $name/distill/generator_ema 2>&1 | head -n 3
done
ls -la "$OUTDIR"
tar -rf "$OUTDIR/${VARIANTS[0]%%|*}.tar" -C runs/gpu gpu_distill.log
