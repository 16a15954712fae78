"""``optim.lr_decay_start`` / ``optim.lr_decay_final``: a cosine decay of every learning rate over the run's budget.

The curve itself, then end to end on the 2-D toy (torch backend, CPU): the rates logged per iteration follow the
curve of images / ``run.duration_images`` for the generator, the fake score and the conv head's own group; a run
killed in the middle of the decay resumes bit-identical to an uninterrupted one; without the keys nothing changes,
bit for bit (also through the decay's code path before its start); a resume does not report the decayed rates as
changed ones; bad values are configuration errors that write nothing. The demo follows its own budget.
"""

from __future__ import annotations

import csv
import itertools
import math
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from testkit import TOY, run_toy

BATCH, ITERATIONS = 256, 6
LR_G, LR_FAKE, LR_HEAD = 2e-4, 6e-4, 1e-3
DECAY = ("--optim.lr_decay_start=0.25", "--optim.lr_decay_final=0.1")


def _cosine(progress: float, start: float, final: float) -> float:
    """The specified curve, written out: 1 until start, then final + (1 - final) (1 + cos(pi t)) / 2."""
    if progress <= start:
        return 1.0
    t = min(1.0, (progress - start) / (1.0 - start))
    return final + (1.0 - final) * (1.0 + math.cos(math.pi * t)) / 2.0


def _run(out: Path, name: str, *extra: str, fault: dict | None = None) -> subprocess.CompletedProcess:
    return run_toy(out, name, f"--optim.lr_g={LR_G}", f"--optim.lr_fake={LR_FAKE}", "--discriminator.kind=conv",
                   f"--discriminator.lr={LR_HEAD}", *extra, batch=BATCH, iterations=ITERATIONS, fault=fault)


def _log(run: Path) -> list[dict]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def _states(run: Path, iteration: int) -> tuple[dict, dict]:
    ck = run / "checkpoints" / f"ckpt-{iteration:09d}"
    g = torch.load(ck / "generator" / "generator.pt", map_location="cpu", weights_only=False)
    f = torch.load(ck / "fake" / "fake.pt", map_location="cpu", weights_only=False)
    return g, f


def _equal_states(a: dict, b: dict) -> bool:
    if not all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"]):
        return False
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr_decay")
    results = {}
    for name, extra, fault in (("decay", DECAY, None), ("plain", (), None),
                               # the decay's code path at a multiplier of 1 throughout
                               ("start1", ("--optim.lr_decay_start=1", "--optim.lr_decay_final=0.1"), None),
                               ("cut", DECAY, {"FASTUI_FAULT_KILL_AT_ITERATION": "4"})):
        r = _run(out, name, *extra, fault=fault)
        expected = -signal.SIGKILL if fault else 0
        assert r.returncode == expected, r.stderr[-3000:]
        results[name] = out / name
    r = _run(out, "cut", *DECAY, "--resume", "auto")
    assert r.returncode == 0 and "ckpt-000000003" in r.stdout, r.stderr[-3000:]
    results["resume_err"] = r.stderr
    return results


def test_the_curve():
    from fastui.train.schedule import lr_scale

    grid = [i / 200 for i in range(241)]
    for start, final in ((0.5, 0.1), (0.0, 0.3), (0.9, 0.01), (0.25, 1.0)):
        values = [lr_scale(p, start, final) for p in grid]
        assert values == pytest.approx([_cosine(p, start, final) for p in grid], abs=1e-12)
        assert all(a >= b for a, b in itertools.pairwise(values))
        assert lr_scale(start, start, final) == 1.0 and lr_scale(1.0, start, final) == pytest.approx(final)
        assert lr_scale(1.7, start, final) == pytest.approx(final)
    assert lr_scale(0.0, 1.0, 0.1) == 1.0 and lr_scale(1.0, 1.0, 0.1) == 1.0  # start 1: never decays


def test_every_group_follows_the_curve_of_images_over_the_budget(runs):
    rows = _log(runs["decay"])
    assert [int(r["iteration"]) for r in rows] == list(range(1, ITERATIONS + 1))
    for r in rows:
        # a row is logged after its iteration, which ran at the rate of the images before it
        scale = _cosine((int(r["iteration"]) - 1) / ITERATIONS, 0.25, 0.1)
        assert float(r["lr_g"]) == pytest.approx(LR_G * scale, rel=1e-9)
        assert float(r["lr_fake"]) == pytest.approx(LR_FAKE * scale, rel=1e-9)
        assert float(r["lr_disc"]) == pytest.approx(LR_HEAD * scale, rel=1e-9)
    assert float(rows[-1]["lr_g"]) < 0.25 * LR_G  # the decay did happen (5/6 of the way: 0.205)


def test_before_the_decay_starts_nothing_changes(runs):
    for r in _log(runs["plain"]) + _log(runs["start1"]):
        assert (float(r["lr_g"]), float(r["lr_fake"]), float(r["lr_disc"])) == (LR_G, LR_FAKE, LR_HEAD)
    for it in (1, ITERATIONS):
        for a, b in zip(_states(runs["plain"], it), _states(runs["start1"], it)):
            assert _equal_states(a, b)
    # the decayed run parts from the plain one once its rates drop (iteration 3 runs at progress 1/3 > 0.25)
    assert all(_equal_states(a, b) for a, b in zip(_states(runs["plain"], 2), _states(runs["decay"], 2)))
    assert not all(_equal_states(a, b) for a, b in zip(_states(runs["plain"], 3), _states(runs["decay"], 3)))


def test_a_run_killed_in_the_decay_resumes_bit_identical(runs):
    for it in (4, ITERATIONS):
        for a, b in zip(_states(runs["decay"], it), _states(runs["cut"], it)):
            assert _equal_states(a, b), f"iteration {it}"
    assert [r["lr_g"] for r in _log(runs["cut"])] == [r["lr_g"] for r in _log(runs["decay"])]
    # the checkpoint's decayed rates are not reported as a change of the configured ones
    assert "optimizer lr" not in runs["resume_err"], runs["resume_err"]


@pytest.mark.parametrize("args,msg", [
    (("--optim.lr_decay_start=1.5",), "optim.lr_decay_start must be in [0, 1]"),
    (("--optim.lr_decay_start=-0.1",), "optim.lr_decay_start must be in [0, 1]"),
    (("--optim.lr_decay_final=0",), "optim.lr_decay_final must be in (0, 1]"),
    (("--optim.lr_decay_final=2",), "optim.lr_decay_final must be in (0, 1]"),
])
def test_bad_decay_settings_exit_2_and_write_nothing(tmp_path, capsys, args, msg):
    from fastui.train.__main__ import main

    code = main(["--config", str(TOY), f"--run.out_dir={tmp_path / 'runs'}", *args])
    assert code == 2 and not (tmp_path / "runs").exists()
    assert msg in capsys.readouterr().err
