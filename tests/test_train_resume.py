"""Exact resume: SIGKILL mid-iteration and mid-checkpoint, then ``--resume auto``, ends bit-identical to a run that
was never interrupted (DeepSpeed ZeRO-1, fp32, CPU). Faults are injected with ``FASTUI_FAULT_*`` (run.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = 6
BATCH = 32


def _run(out: Path, name: str, *extra: str, fault: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(fault or {})
    args = [sys.executable, "-m", "fastui.train", "--config", str(ROOT / "configs" / "toy_ring8.toml"),
            f"--run.out_dir={out}", f"--run.name={name}", f"--run.duration_images={ITERATIONS * BATCH}",
            f"--run.ckpt_every_images={BATCH}", "--run.grid_every_images=0", "--run.log_every=1",
            "--run.tensorboard=false", "--run.progress=false", "--run.keep_last=10",
            f"--batch.global_size={BATCH}", f"--batch.micro={BATCH}", f"--schedule.ratio_start_images={2 * BATCH}",
            "--engine.backend=deepspeed", "--engine.zero_stage=1",
            '--model.arch={model = "MLP", dim = 2, hidden = 32, layers = 2}', *extra]
    return subprocess.run(args, env=env, check=False, capture_output=True, text=True, timeout=600, cwd=ROOT)


def _states(run_dir: Path) -> dict:
    ck = run_dir / "checkpoints" / f"ckpt-{ITERATIONS:09d}"
    out = {}
    for net in ("generator", "fake"):
        files = sorted((ck / net / net).glob("*model_states.pt"))
        assert files, f"no DeepSpeed model states in {ck / net}"
        out[net] = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    out["ema"] = torch.load(run_dir / "generator_ema" / "weights.pt", weights_only=True)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    full = _run(out, "full")
    assert full.returncode == 0, full.stderr[-3000:]
    # 1) killed while writing checkpoint 3: ckpt 1-2 complete, .tmp-ckpt-3 half written
    a = _run(out, "cut", fault={"FASTUI_FAULT_KILL_IN_CHECKPOINT": "3"})
    assert a.returncode == -signal.SIGKILL, a.stderr[-3000:]
    ckpts = sorted(p.name for p in (out / "cut" / "checkpoints").iterdir())
    # 2) resumed, then killed during iteration 4 (after checkpoint 3 was written again)
    b = _run(out, "cut", "--resume", "auto", fault={"FASTUI_FAULT_KILL_AT_ITERATION": "4"})
    assert b.returncode == -signal.SIGKILL, b.stderr[-3000:]
    # 3) resumed to the end
    c = _run(out, "cut", "--resume", "auto")
    assert c.returncode == 0, c.stderr[-3000:]
    return {"full": out / "full", "cut": out / "cut", "ckpts_after_cut": ckpts, "b": b, "c": c}


def test_checkpoint_killed_mid_write_is_left_as_temporary_and_not_resumed(runs):
    assert runs["ckpts_after_cut"] == [".tmp-ckpt-000000003", "ckpt-000000001", "ckpt-000000002"]
    assert "resumed from" in runs["b"].stdout and "ckpt-000000002" in runs["b"].stdout, runs["b"].stdout


def test_run_killed_during_iteration_4_resumes_from_checkpoint_3(runs):
    assert "ckpt-000000003" in runs["c"].stdout, runs["c"].stdout


def test_resumed_run_is_bit_identical_to_uninterrupted_run(runs):
    full, cut = _states(runs["full"]), _states(runs["cut"])
    for part in ("generator", "fake", "ema"):
        assert full[part].keys() == cut[part].keys()
        for k in full[part]:
            assert torch.equal(full[part][k], cut[part][k]), f"{part}.{k} differs after resume"


def test_uninterrupted_run_changed_the_generator(runs):
    """The identity above must not be the trivial one of two runs that train nothing."""
    ck1 = runs["full"] / "checkpoints" / "ckpt-000000001" / "generator" / "generator"
    first = torch.load(min(ck1.glob("*model_states.pt")), weights_only=False)["module"]
    last = _states(runs["full"])["generator"]
    assert any(not torch.equal(first[k], last[k]) for k in first)


def test_resumed_log_has_each_iteration_once_with_the_uninterrupted_values(runs):
    """Rows logged after the checkpoint a run resumes from are dropped, so the CSV reads like one run's."""
    import csv

    def rows(run):
        with open(run / "log.csv") as f:
            return list(csv.DictReader(f))

    full, cut = rows(runs["full"]), rows(runs["cut"])
    assert [r["iteration"] for r in cut] == [str(i) for i in range(1, ITERATIONS + 1)]
    assert [r["loss_g"] for r in cut] == [r["loss_g"] for r in full]


@pytest.mark.parametrize("backend", ["torch", "deepspeed"])
def test_resume_takes_the_learning_rates_of_its_own_config(tmp_path, backend):
    """An optimizer's saved state carries the old learning rate; a resumed run uses the one it was given (lr decay
    from a checkpoint), says so, and keeps the Adam moments."""
    import csv

    engine = (f"--engine.backend={backend}", f"--engine.zero_stage={int(backend == 'deepspeed')}")
    first = _run(tmp_path, "lr", f"--run.duration_images={3 * BATCH}", *engine)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run(tmp_path, "lr", "--resume", "auto", *engine, "--optim.lr_g=2.5e-4",
                  "--optim.lr_fake=5e-4")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "generator optimizer lr 0.001 -> 0.00025" in second.stderr
    assert "fake optimizer lr 0.001 -> 0.0005" in second.stderr
    with open(tmp_path / "lr" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["iteration"] for r in rows] == [str(i) for i in range(1, ITERATIONS + 1)]
    assert {(float(r["lr_g"]), float(r["lr_fake"])) for r in rows[:3]} == {(1e-3, 1e-3)}
    assert {(float(r["lr_g"]), float(r["lr_fake"])) for r in rows[3:]} == {(2.5e-4, 5e-4)}


def test_resume_splits_the_discriminator_head_into_its_own_learning_rate(tmp_path):
    """A run saved with one fake-engine Adam group resumes with ``discriminator.lr`` as two: the head's rate is this
    run's, reported on resume and logged as ``lr_disc``; the fake score keeps ``optim.lr_fake``."""
    import csv

    engine = ("--engine.backend=torch", "--engine.zero_stage=0", "--discriminator.kind=conv")
    first = _run(tmp_path, "dlr", f"--run.duration_images={3 * BATCH}", *engine)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run(tmp_path, "dlr", "--resume", "auto", *engine, "--discriminator.lr=2e-3")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "fake optimizer lr[group 1] 0.001 -> 0.002" in second.stderr
    with open(tmp_path / "dlr" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["iteration"] for r in rows] == [str(i) for i in range(1, ITERATIONS + 1)]
    assert {r.get("lr_disc") or "" for r in rows[:3]} == {""}
    assert {(float(r["lr_fake"]), float(r["lr_disc"])) for r in rows[3:]} == {(1e-3, 2e-3)}
    assert all(float(r["n_nonfinite_grad_g"]) == 0 and float(r["n_nonfinite_grad_fake"]) == 0 for r in rows)
