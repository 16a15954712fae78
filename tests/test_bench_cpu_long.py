"""``bench/cpu_long.sh``: a trajectory that many sessions continue picks its stage from the checkpoint's image count
(SMOKE=1: batch 8, stages ending at 16 / 32 / 48 / 64 images, on 64 real Fashion-MNIST images)."""

from __future__ import annotations

import csv
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import FMNIST, ROOT, clean_env, fmnist_shards


def _script(tmp_path: Path, *, dry: bool = False, data: str = "shards", **more: str) -> subprocess.CompletedProcess:
    env = clean_env(SMOKE="1", CPU_LONG_ROOT=str(tmp_path / "runs"), DATA=str(tmp_path / data), PYTHON=sys.executable,
                    DRY="1" if dry else "0", **more)
    return subprocess.run(["bash", str(ROOT / "bench" / "cpu_long.sh"), "5", "t"], env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.mark.skipif(not FMNIST.exists(), reason="needs dataset-fashion-mnist")
def test_the_stages_follow_the_image_count_and_a_finished_run_stops(tmp_path):
    fmnist_shards(tmp_path / "shards", 64)
    dry = _script(tmp_path, dry=True)
    assert dry.returncode == 0 and "at 0 images: stage 1" in dry.stdout, dry.stdout + dry.stderr
    assert not (tmp_path / "runs").exists()  # DRY=1 runs nothing

    r = _script(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stages = re.findall(r"at (\d+) images: stage (\d)", r.stdout)
    assert stages == [("0", "1"), ("16", "2"), ("32", "3"), ("48", "4")], r.stdout
    assert "generator optimizer lr 0.0001 -> 2.5e-05" in r.stderr  # stage 2 lowers the rates
    refreshes = re.findall(r"fresh discriminator head at (\d+) images", r.stdout)
    assert refreshes == ["48", "56", "64"], r.stdout  # past 32 images: every 16 in stage 3, every 8 in stage 4
    assert "is done (64 images)" in r.stdout
    snaps = sorted(p.name for p in (tmp_path / "runs" / "t" / "snapshots").iterdir())
    assert snaps == [f"{n:09d}" for n in (8, 16, 24, 32, 40, 48, 56, 64)]

    again = _script(tmp_path)
    assert again.returncode == 0 and "is done (64 images)" in again.stdout and ": stage" not in again.stdout
    assert "data stream restarted" not in r.stdout + again.stdout

    # moved to other shards (as bench/gpu_continue.sh does with a subset): the data position restarts, once
    fmnist_shards(tmp_path / "other", 64, shard_size=32)
    shutil.rmtree(tmp_path / "runs" / "t" / "checkpoints" / "ckpt-000000008")  # back to 56 images
    moved = _script(tmp_path, data="other")
    assert moved.returncode == 0, moved.stdout[-3000:] + moved.stderr[-3000:]
    assert re.findall(r"at (\d+) images: stage (\d)", moved.stdout) == [("56", "4")], moved.stdout
    assert "other shards: data stream restarted" in moved.stdout and "the data stream starts over" in moved.stdout
    assert "is done (64 images)" in moved.stdout

    # the first call that trained saved its plan (the default end, no stage-4 overrides); another is refused
    plan = tmp_path / "runs" / "t" / "cpu_long.plan"
    assert plan.read_text() == "end=\nstage4=\n"
    decay = "--optim.lr_decay_start=0.7 --optim.lr_decay_final=0.1"
    refused = _script(tmp_path, data="other", CPU_LONG_END="80", CPU_LONG_STAGE4=decay)
    assert refused.returncode == 2 and "give the same values or none" in refused.stderr, refused.stdout + refused.stderr
    assert ": stage" not in refused.stdout and plan.read_text() == "end=\nstage4=\n"

    # stage 4 taken further (CPU_LONG_END) with overrides of its own (CPU_LONG_STAGE4): the rates decay to the new end
    plan.unlink()
    longer = _script(tmp_path, data="other", CPU_LONG_END="80", CPU_LONG_STAGE4=decay,
                     CPU_LONG_EXTRA="--run.log_every=1")
    assert longer.returncode == 0, longer.stdout[-3000:] + longer.stderr[-3000:]
    assert re.findall(r"at (\d+) images: stage (\d)", longer.stdout) == [("64", "4")], longer.stdout
    assert "is done (80 images)" in longer.stdout
    with open(tmp_path / "runs" / "t" / "log.csv") as f:
        lr_g = [float(r["lr_g"]) for r in csv.DictReader(f) if int(r["images"]) > 64]
    # half-cosine from 70% of 80 images to 0.1x at the end, each iteration at the fraction done before it (64, 72)
    scale = [0.1 + 0.9 * (1 + math.cos(math.pi * (f - 0.7) / 0.3)) / 2 for f in (64 / 80, 72 / 80)]
    assert lr_g == pytest.approx([2.5e-5 * s for s in scale], rel=1e-4), lr_g

    # a later call that forgets the two takes them from the plan (without it, 72 images would be past the end, 64)
    assert plan.read_text() == f"end=80\nstage4={decay}\n"
    shutil.rmtree(tmp_path / "runs" / "t" / "checkpoints" / "ckpt-000000010")  # back to 72 images
    later = _script(tmp_path, dry=True, data="other")
    assert later.returncode == 0 and re.findall(r"at (\d+) images: stage (\d)", later.stdout) == [("72", "4")], \
        later.stdout + later.stderr
    assert f"--run.duration_images=80 {decay}" in later.stdout, later.stdout
    other = _script(tmp_path, data="other", CPU_LONG_END="96")
    assert other.returncode == 2 and "CPU_LONG_END='80'" in other.stderr, other.stdout + other.stderr
    assert plan.read_text() == f"end=80\nstage4={decay}\n"


def test_stage4_settings_reach_stage_4_only_and_a_bad_end_writes_nothing(tmp_path):
    dry = _script(tmp_path, dry=True, CPU_LONG_END="100", CPU_LONG_STAGE4="--optim.lr_decay_start=0.5")
    assert dry.returncode == 0 and "at 0 images: stage 1" in dry.stdout, dry.stdout + dry.stderr
    assert "lr_decay_start" not in dry.stdout and "--run.duration_images=16" in dry.stdout

    for bad in ("48", "4e5", "-1", "abc"):  # not past stage 3's end (48 in SMOKE), or not a whole number
        r = _script(tmp_path, CPU_LONG_END=bad)
        msg = f"CPU_LONG_END must be a whole number of images past stage 3's end (48), got {bad}"
        assert r.returncode == 2 and msg in r.stderr, r.stdout + r.stderr
    assert not list(tmp_path.iterdir())  # no shards, no run directory
