"""``discriminator.refresh_*``: a fresh, pre-trained conv head in the middle of a run (fastui/train/refresh.py).

End to end on the 2-D toy (torch backend, CPU): a refresh replaces the head and drops only its Adam state, leaves the
fake score, the generator and their optimizer state alone, learns (``L_disc`` falls), and a run killed around a
refresh resumes bit-identical to an uninterrupted one. Two ranks (DDP over gloo) hold identical heads after a refresh,
equal to a single process's. Bad settings are configuration errors that write nothing. This file is also the worker
of the two-rank check (``python tests/test_train_refresh.py worker OUT``).
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from testkit import TOY, mlp_uni_config, run_toy

ROOT = Path(__file__).resolve().parents[1]
BATCH, ITERATIONS = 256, 6
REFRESH = ("--discriminator.refresh_every_images=512", "--discriminator.refresh_steps=150",
           "--discriminator.refresh_pool=1024")


def _run(out: Path, name: str, *extra: str, fault: dict | None = None) -> subprocess.CompletedProcess:
    return run_toy(out, name, *extra, batch=BATCH, iterations=ITERATIONS, fault=fault)


def _fake(run: Path, iteration: int) -> dict:
    return torch.load(run / "checkpoints" / f"ckpt-{iteration:09d}" / "fake" / "fake.pt", map_location="cpu",
                      weights_only=False)


def _generator(run: Path, iteration: int) -> dict:
    path = run / "checkpoints" / f"ckpt-{iteration:09d}" / "generator" / "generator.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def _head_indices(state: dict) -> list[int]:
    """Optimizer indices of the head's parameters (the fake engine registers the fake score, then the head)."""
    names = [k for k in state["module"] if k.endswith((".weight", ".bias"))]
    return [i for i, k in enumerate(names) if k.startswith("head.")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("refresh")
    full = _run(out, "full", *REFRESH)
    assert full.returncode == 0, full.stderr[-3000:]
    none = _run(out, "none")
    assert none.returncode == 0, none.stderr[-3000:]
    # killed during iteration 4, before the refresh that ends it; resumed from checkpoint 3 to the end
    a = _run(out, "cut", *REFRESH, fault={"FASTUI_FAULT_KILL_AT_ITERATION": "4"})
    assert a.returncode == -signal.SIGKILL, a.stderr[-3000:]
    b = _run(out, "cut", *REFRESH, "--resume", "auto")
    assert b.returncode == 0, b.stderr[-3000:]
    return {"full": out / "full", "none": out / "none", "cut": out / "cut", "full_out": full.stdout,
            "cut_out": a.stdout + b.stdout}


def test_a_head_is_refreshed_at_every_multiple_of_the_interval_and_learns(runs):
    lines = re.findall(r"fresh discriminator head at ([\d,]+) images.*L_disc ([\d.]+) -> ([\d.]+)", runs["full_out"])
    assert [int(n.replace(",", "")) for n, _, _ in lines] == [512, 1024, 1536], runs["full_out"]
    for _, first, last in lines:
        assert float(last) < float(first) - 0.05, lines  # the one-step toy generator is easy to tell from the ring
    with open(runs["full"] / "log.csv") as f:
        rows = list(csv.DictReader(f))  # rows written before the first refresh lack its columns
    assert [r["disc_refresh"] or "" for r in rows] == ["", "1.0", "", "1.0", "", "1.0"]
    assert [round(float(r["refresh_loss_disc"]), 4) for r in rows if r["refresh_loss_disc"]] == \
        [float(last) for _, _, last in lines]


def test_refresh_replaces_only_the_head_and_its_adam_state(runs):
    full, none = runs["full"], runs["none"]
    # iteration 1: no refresh yet, same run
    a, b = _fake(full, 1), _fake(none, 1)
    assert all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"])
    # iteration 2 ends with the first refresh: the head is new, the fake score and the generator are not
    a, b = _fake(full, 2), _fake(none, 2)
    head = [k for k in a["module"] if k.startswith("head.")]
    assert head and a["module"].keys() == b["module"].keys()
    for k in a["module"]:
        same = torch.equal(a["module"][k], b["module"][k])
        assert same != (k in head), f"{k}: {'unchanged' if same else 'changed'} by the refresh"
    ga, gb = _generator(full, 2), _generator(none, 2)
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    idx = _head_indices(a)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(i not in sa for i in idx) and all(i in sb for i in idx)
    for i in sb:
        if i not in idx:
            assert all(torch.equal(sa[i][n], sb[i][n]) for n in sb[i]), f"Adam state {i} changed by the refresh"
    # training goes on with the new head: its density ratio weights the next generator step, so the runs part
    ga, gb = _generator(full, 3), _generator(none, 3)
    assert not all(torch.equal(ga[k], gb[k]) for k in ga)
    assert all(i in _fake(full, 3)["optimizer"]["state"] for i in idx)


def test_a_run_killed_before_a_refresh_resumes_bit_identical(runs):
    assert "resumed from" in runs["cut_out"] and "ckpt-000000003" in runs["cut_out"]
    for it in (4, ITERATIONS):
        a, b = _fake(runs["full"], it), _fake(runs["cut"], it)
        for k in a["module"]:
            assert torch.equal(a["module"][k], b["module"][k]), f"fake.{k} differs at iteration {it}"
        for i, st in a["optimizer"]["state"].items():
            assert all(torch.equal(st[n], b["optimizer"]["state"][i][n]) for n in st), f"Adam state {i} differs"
        ga, gb = _generator(runs["full"], it), _generator(runs["cut"], it)
        assert all(torch.equal(ga[k], gb[k]) for k in ga)


@pytest.mark.parametrize("args,msg", [
    (("--discriminator.refresh_every_images=512", "--engine.backend=torch", "--discriminator.kind=shared"),
     "kind = 'conv'"),
    (("--discriminator.refresh_every_images=512", "--engine.backend=deepspeed"), "engine.backend = 'torch'"),
    (("--discriminator.refresh_steps=-1",), "refresh_steps must be >= 0"),
    (("--discriminator.refresh_lr=0",), "refresh_lr must be > 0"),
    (("--discriminator.refresh_batch=128", "--discriminator.refresh_pool=64"), "must be <= discriminator.refresh_pool"),
    (("--discriminator.refresh_every_images=512", "--engine.backend=torch", "--loss.method=sid", "--loss.divergence=",
      "--loss.gan=off"),
     "trains no discriminator"),
])
def test_bad_refresh_settings_exit_2_and_write_nothing(tmp_path, capsys, args, msg):
    from fastui.train.__main__ import main

    code = main(["--config", str(TOY), f"--run.out_dir={tmp_path / 'runs'}", *args])
    assert code == 2 and not (tmp_path / "runs").exists()
    assert msg in capsys.readouterr().err


def test_refresh_due_counts_images_past_the_start():
    from fastui.train.config import Config
    from fastui.train.run import refresh_due

    cfg = Config()
    cfg.discriminator.refresh_every_images, cfg.discriminator.refresh_start_images = 1000, 2500
    due = [n for n in range(300, 6001, 300) if refresh_due(cfg, n, 300)]
    assert due == [3000, 4200, 5100, 6000]  # the iterations that cross 3000, 4000, 5000, 6000
    cfg.discriminator.refresh_every_images = 0
    assert not any(refresh_due(cfg, n, 300) for n in range(300, 6001, 300))


def _config(world: int):
    cfg = mlp_uni_config(8, 8 // world)
    cfg.batch.noise = "global"
    cfg.discriminator.refresh_every_images, cfg.discriminator.refresh_steps = 8, 40
    cfg.discriminator.refresh_pool, cfg.discriminator.refresh_batch = 60, 16  # not a multiple of the batch
    return cfg


def worker(out_dir: Path) -> None:
    """A refresh before any training (the generator is the teacher's copy on every rank): each rank's head."""
    import torch.distributed as dist

    from fastui.train.config import resolve
    from fastui.train.refresh import refresh_head
    from fastui.train.run import setup

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = _config(world)
    s = setup(cfg, resolve(cfg, world))
    refresh_head(s.ctx, 0)
    head = {k: v.detach().clone() for k, v in s.fake.module.head.state_dict().items()}
    rank = dist.get_rank()
    torch.save(head, out_dir / f"head_w{world}_r{rank}.pt")
    dist.barrier()


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    out = tmp_path_factory.mktemp("refresh_dist")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    me = str(Path(__file__).resolve())
    r1 = subprocess.run([sys.executable, me, "worker", str(out)], env=env, check=False, capture_output=True,
                        text=True, timeout=600)
    assert r1.returncode == 0, r1.stdout[-3000:] + r1.stderr[-3000:]
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                         "29627", me, "worker", str(out)], env=env, check=False, capture_output=True, text=True,
                        timeout=600)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    return {p.stem: torch.load(p, weights_only=True) for p in out.glob("head_*.pt")}


def test_two_ranks_refresh_to_the_same_head_as_one_process(heads):
    one, r0, r1 = heads["head_w1_r0"], heads["head_w2_r0"], heads["head_w2_r1"]
    for k in one:
        assert torch.equal(r0[k], r1[k]), f"{k}: the ranks' heads differ"
        torch.testing.assert_close(r0[k], one[k], rtol=0, atol=1e-6)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        worker(Path(sys.argv[2]))
    else:
        sys.exit("usage: python tests/test_train_refresh.py worker OUT")
