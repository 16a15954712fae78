# Sourced by bench/gpu_distill.sh, bench/gpu_long.sh and bench/gpu_continue.sh on a lent GPU machine (with PY set, in
# the repository root).
# gpu_env_setup DATA [FMNIST]:
#   prints the GPU, installs the carried wheels (.whl/: webdataset, braceexpand; the machine's image has torch but not
# these) into /tmp/site, and writes the Fashion-MNIST shards to $1 unless they exist (from FMNIST, default
# .carry/fmnist, else the Debian package's directory). Exits 98 when torch or webdataset cannot be imported, 97 when
# the shards fail.
gpu_env_setup() {
  local data=$1 fmnist=${2:-.carry/fmnist}
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  local wheels=${GPU_WHEELS:-.whl}  # the CPU smoke tests name a folder without wheels
  if compgen -G "$wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
      && export PYTHONPATH=$PYTHONPATH:/tmp/site
  fi
  "$PY" -c "import torch, webdataset; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 98
  if [ ! -f "$data/manifest.json" ]; then
    [ -d "$fmnist" ] || fmnist=/usr/share/datasets/fashion-mnist
    "$PY" -m fastui.data.cli fashion-mnist --root "$fmnist" --out "$data" --pad-to 32 --workers 8 --overwrite || exit 97
  fi
}

# gpu_watch LOG: sample GPU memory and utilisation every 20 s into LOG in the background (GPU_WATCH_PID).
gpu_watch() {
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader -l 20 > "$1" 2>&1 &
  GPU_WATCH_PID=$!
}

# gpu_wait_all LOG PID...: wait for the runs, report each exit status, stop the sampler and print its LOG.
gpu_wait_all() {
  local log=$1 p
  shift
  for p in "$@"; do wait "$p"; echo "pid $p exit $?"; done
  kill "$GPU_WATCH_PID" 2>/dev/null
  echo "GPU memory used, utilisation (every 20 s):"
  cat "$log"
}
