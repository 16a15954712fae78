"""Every preset builds and trains two iterations end to end with ``--dry-run`` (tiny stand-ins of the same network
structure, synthetic data, the preset's DeepSpeed settings on one CPU process), and the small CPU configs run."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.name for p in (ROOT / "configs").glob("*.toml") if p.name.startswith(("cifar10_", "imagenet64_")))

# One process for all presets: DeepSpeed's start-up is paid once.
_LOOP = """
import sys
from fastui.train.__main__ import main
codes = {}
for name in sys.argv[1:]:
    codes[name] = main(["--config", "configs/" + name, "--dry-run"])
    print("RESULT", name, codes[name], flush=True)
sys.exit(max(codes.values()))
"""


def _env():
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def dry_runs():
    r = subprocess.run([sys.executable, "-c", _LOOP, *PRESETS], env=_env(), check=False, capture_output=True, text=True,
                       timeout=900, cwd=ROOT)
    return r


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_dry_run_trains_two_iterations(dry_runs, preset):
    lines = [ln for ln in dry_runs.stdout.splitlines() if ln.startswith(f"RESULT {preset} ")]
    assert lines == [f"RESULT {preset} 0"], dry_runs.stdout[-2000:] + dry_runs.stderr[-4000:]
    ok = [ln for ln in dry_runs.stdout.splitlines() if ln.startswith("fastui train: dry run OK")]
    assert ok, dry_runs.stdout[-2000:]
    assert "nan" not in " ".join(ok).lower()


def test_dry_run_writes_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastui.train", "--config", "configs/tiny_cpu.toml", "--dry-run",
                        f"--run.out_dir={tmp_path / 'runs'}", "--engine.backend=torch", "--engine.zero_stage=0"],
                       env=_env(), check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dry run OK" in r.stdout and "loss_g" in r.stdout
    assert not (tmp_path / "runs").exists()


_KNOBS = """
import sys
from fastui.train.__main__ import main
base = ["--config", "configs/tiny_cpu.toml", "--dry-run", "--engine.zero_stage=3"]
main(base)
main(base + ['--model.activation_checkpointing=["teacher", "fake", "generator"]'])
"""


def test_activation_checkpointing_of_all_three_networks_keeps_the_losses_under_zero3():
    r = subprocess.run([sys.executable, "-c", _KNOBS], check=False, env=_env(), capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    ok = [ln.split(": ", 2)[-1] for ln in r.stdout.splitlines() if ln.startswith("fastui train: dry run OK")]
    assert len(ok) == 2
    plain, ckpt = (ast.literal_eval(s) for s in ok)  # dicts of rounded floats printed by the dry run
    assert plain.keys() == ckpt.keys()
    for k in plain:
        assert abs(plain[k] - ckpt[k]) <= 1e-4 * max(1.0, abs(plain[k])), (k, plain[k], ckpt[k])
