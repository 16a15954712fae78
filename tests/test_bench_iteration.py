"""bench.iteration: both gradient-guard forms run the same iteration; the per-step form dispatches fewer operations.
(Run as a subprocess: the benchmark initialises a process group, which must not outlive it in the test process.)"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env["MASTER_PORT"] = "29587"
    return subprocess.run([sys.executable, "-m", "bench.iteration", "--config", "configs/toy_ring8.toml", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_rows_for_both_guard_forms_with_fewer_operations_per_step(tmp_path):
    out = tmp_path / "it.csv"
    r = _run("--set", "engine.backend=torch", "--iterations", "2", "--block", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["guard"]: row for row in csv.DictReader(out.open())}
    assert set(rows) == {"hooks", "step"}
    hooks, step = int(rows["hooks"]["ops_per_iteration"]), int(rows["step"]["ops_per_iteration"])
    assert 0 < step < hooks
    assert all(float(row["p50_ms"]) > 0 and row["git_sha"] and row["device"] for row in rows.values())


def test_refuses_a_deepspeed_config():
    r = _run("--set", "engine.backend=deepspeed")
    assert r.returncode == 2 and "engine.backend" in r.stderr


def test_one_guard_form_with_warmup_writes_one_row(tmp_path):
    out = tmp_path / "it.csv"
    r = _run("--set", "engine.backend=torch", "--guard", "step", "--warmup", "1", "--iterations", "2", "--out",
             str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert [row["guard"] for row in rows] == ["step"] and int(rows[0]["ops_per_iteration"]) > 0
    assert float(rows[0]["gflop_per_iteration"]) > 0 and float(rows[0]["gflop_per_s"]) > 0
    assert "1 warm-up iterations" in r.stdout


def test_bad_counts_are_refused():
    r = _run("--warmup", "-1")
    assert r.returncode == 2 and "--warmup" in r.stderr
