"""``bench/gpu_continue.sh``: the CPU trajectory packed, continued elsewhere on a Fashion-MNIST subset, and handed back
(SMOKE=1 on this CPU: batch 8, stages ending at 16 / 32 / 48 / 64 images, no GPU, no wheels)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from testkit import FMNIST, ROOT, clean_env, fmnist_shards

from bench.carry_run import main as carry


def _bash(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "bench" / script), *args], env=clean_env(SMOKE="1", **env),
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.skipif(not FMNIST.exists(), reason="needs dataset-fashion-mnist")
def test_a_trajectory_continued_elsewhere_comes_back_and_goes_on(tmp_path):
    # the CPU trajectory: 64 images in two shards, run to its end (64 images), then back to its checkpoint at 56
    fmnist_shards(tmp_path / "shards", 64, shard_size=32)
    cpu = {"CPU_LONG_ROOT": str(tmp_path / "cpu"), "DATA": str(tmp_path / "shards"), "PYTHON": sys.executable}
    r = _bash("cpu_long.sh", "5", **cpu)
    assert r.returncode == 0 and "is done (64 images)" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "cpu" / "refresh"
    shutil.rmtree(run / "checkpoints" / "ckpt-000000008")
    assert carry(["pack", str(run), str(tmp_path / "pack"), "--fmnist", str(FMNIST), "--images", "40"]) == 0

    out = tmp_path / "out"
    g = _bash("gpu_continue.sh", str(out), "5", CARRY=str(tmp_path / "pack"), GPU_CONT_ROOT=str(tmp_path / "gpu"),
              GPU_WHEELS=str(tmp_path / "no-wheels"), BF16="false", PYTHON=sys.executable)
    assert g.returncode == 0, g.stdout[-4000:] + g.stderr[-3000:]
    assert re.findall(r"at (\d+) images: stage (\d)", g.stdout) == [("56", "4")], g.stdout
    assert "other shards: data stream restarted" in g.stdout and "is done (64 images)" in g.stdout
    assert json.loads((tmp_path / "gpu" / "shards" / "manifest.json").read_text())["total"] == 40  # the subset
    back = json.loads((out / "ckpt" / "manifest.json").read_text())
    assert back["meta"]["images"] == 64 and back["moments"] == "bf16"
    assert back["continues"]["checkpoint"] == "ckpt-000000007"  # what the CPU run's newest checkpoint still is
    with tarfile.open(out / "cont.tar") as tar:
        names = set(tar.getnames())
        assert {"gpu_continue.log", "refresh/log.csv", "samples.npz"} <= names
        samples = np.load(io.BytesIO(tar.extractfile("samples.npz").read()))
        assert set(samples.files) == {"refresh/64", "refresh/final"} and samples["refresh/64"].shape[0] == 300

    # back here: the returned checkpoint becomes the trajectory's newest (a CPU resume on other shards than the
    # checkpoint's restarts the data stream: tests/test_bench_cpu_long.py)
    assert carry(["unpack", str(out / "ckpt"), str(run)]) == 0
    dry = _bash("cpu_long.sh", "5", DRY="1", **cpu)
    assert "is done (64 images)" in dry.stdout, dry.stdout + dry.stderr


@pytest.mark.skipif(not FMNIST.exists(), reason="needs dataset-fashion-mnist")
def test_a_run_with_only_a_plan_starts_its_trajectory_elsewhere_and_comes_back(tmp_path):
    # nothing trained here (runs/ lost): the run directory holds its plan only, and the GPU starts from the teacher
    run = tmp_path / "cpu" / "decay"
    run.mkdir(parents=True)
    plan = "end=56\nstage4=--optim.lr_decay_start=0.5 --optim.lr_decay_final=0.1\n"
    (run / "cpu_long.plan").write_text(plan)
    assert carry(["pack", str(run), str(tmp_path / "pack"), "--fmnist", str(FMNIST), "--images", "40"]) == 0

    out = tmp_path / "out"
    g = _bash("gpu_continue.sh", str(out), "5", CARRY=str(tmp_path / "pack"), GPU_CONT_ROOT=str(tmp_path / "gpu"),
              GPU_WHEELS=str(tmp_path / "no-wheels"), BF16="false", PYTHON=sys.executable)
    assert g.returncode == 0, g.stdout[-4000:] + g.stderr[-3000:]
    # stages 1-4 from nothing, stage 4 ending at the plan's 56 images (SMOKE's own end is 64)
    assert [s for _, s in re.findall(r"at (\d+) images: stage (\d)", g.stdout)] == ["1", "2", "3", "4"], g.stdout
    assert re.findall(r"at (\d+) images: stage", g.stdout)[0] == "0" and "is done (56 images)" in g.stdout
    assert "the saved plan" in g.stdout
    back = json.loads((out / "ckpt" / "manifest.json").read_text())
    assert back["meta"]["images"] == 56 and back["plan"] == plan and "continues" not in back

    assert carry(["unpack", str(out / "ckpt"), str(run)]) == 0  # back here: the trajectory's first checkpoint
    cpu = {"CPU_LONG_ROOT": str(tmp_path / "cpu"), "DATA": str(tmp_path / "gpu" / "shards"), "PYTHON": sys.executable}
    dry = _bash("cpu_long.sh", "5", "decay", DRY="1", **cpu)
    assert "is done (56 images)" in dry.stdout, dry.stdout + dry.stderr
