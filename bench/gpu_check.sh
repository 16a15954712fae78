#!/usr/bin/env bash
# bench/gpu_check.sh OUTDIR -- the one script for a GPU machine without network (DESIGN.md "Testing").
#
# Installs carried wheels (.whl/, if any), installs fastui (building the native modules), prints `fastui env`, runs
# `pytest -m gpu`, runs the kernel benchmark, and leaves everything in OUTDIR: gpu_check.log (all output),
# env.txt, pytest_gpu.xml, kernels.csv, kernels.png, summary.txt. Every step runs under a time limit, a failing step is
# reported and the script goes on; the whole run stays under ~8 minutes. Exit code = number of failed steps (0 = ok).
#
# Usage: bash bench/gpu_check.sh /tmp/gpu_out      (PYTHON=python3 by default; GPU_CHECK_BUDGET_S=470)
set -u
set -o pipefail

OUTDIR=${1:?usage: bash bench/gpu_check.sh OUTDIR}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 99
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUTDIR/gpu_check.log") 2>&1

RESULTS=()
FAILED=0

# step NAME LIMIT_S CMD...: run CMD with a time limit (cut to the time left in the budget), record rc and duration.
step() {
  local name=$1 limit=$2 left rc start
  shift 2
  left=$((BUDGET_S - SECONDS - 5))
  if [ "$left" -lt 20 ]; then
    echo "=== [$name] SKIPPED: only ${left}s left of the ${BUDGET_S}s budget"
    RESULTS+=("$name: skipped (budget)")
    FAILED=$((FAILED + 1))
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [$name] $(date -u +%H:%M:%S) limit ${limit}s: $*"
  start=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "=== [$name] rc=$rc after $((SECONDS - start))s"
  if [ "$rc" -eq 0 ]; then
    RESULTS+=("$name: ok ($((SECONDS - start))s)")
  else
    RESULTS+=("$name: FAILED rc=$rc ($((SECONDS - start))s)$([ "$rc" -eq 124 ] && echo ', timed out')")
    FAILED=$((FAILED + 1))
  fi
  return 0
}

echo "gpu_check: repo $REPO, out $OUTDIR, python $(command -v "$PY"), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
command -v nvcc >/dev/null && nvcc --version | tail -n 2

# 1. Carried wheels (no network): only if .whl/ holds some.
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
  step wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$REPO"/.whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# 2. Install fastui and build the native modules (fastui._C, fastui._C_cuda); fall back to a plain install.
step install 200 bash -c "'$PY' -m pip install -e . --no-deps --no-build-isolation --no-cache-dir -q || \
  { echo 'editable install failed; trying a regular install'; \
    '$PY' -m pip install . --no-deps --no-build-isolation --no-cache-dir -q; }"
step import 60 "$PY" -c "import fastui, fastui.ops, fastui.kernels; print('fastui', fastui.__version__, fastui.__file__)"

# 3. Environment and backend table.
step env 60 bash -c "'$PY' -m fastui.env | tee '$OUTDIR/env.txt'"

# 4. GPU tests (other modules that fail to import on this machine must not stop the GPU tests).
step pytest-gpu 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors \
  --junitxml="$OUTDIR/pytest_gpu.xml" tests

# 5. Kernel benchmark (GPU shapes, fp32 and bf16; stops adding shapes when its own budget runs out).
step bench-kernels 170 "$PY" -m bench.kernels --device cuda --quick --dtypes fp32,bf16 --reps 30 --budget-s 150 \
  --out "$OUTDIR/kernels.csv" --plot "$OUTDIR/kernels.png"

# 6. Step benchmark (issue 8): ADM ImageNet-64 bf16 and DDPM++ CIFAR-10, reference vs fastui, largest batch.
step bench-step 240 "$PY" -m bench.step --quick --device cuda --out "$OUTDIR/step.csv" --max-batch \
    --max-batch-seconds 40 --max-seconds 20 --profile "$OUTDIR/step_profile_gpu.txt"

{
  echo "gpu_check summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), ${SECONDS}s of ${BUDGET_S}s)"
  for r in "${RESULTS[@]}"; do echo "  $r"; done
  echo "failed steps: $FAILED"
} | tee "$OUTDIR/summary.txt"
exit "$FAILED"
