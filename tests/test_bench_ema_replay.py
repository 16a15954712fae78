"""``bench.ema_replay``: a recorded demo run replays its own EMA exactly, and other settings differ as they should.

A tiny random teacher (8 channels), 3 iterations of ``fastui demo --skip-fid`` recorded; the replay of the run's own
EMA setting equals the exported ``generator_ema`` bit for bit, a half-life of one image gives the last raw
generator, and the replay follows ``ema = beta ema + (1 - beta) param`` step by step (written out here).
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch
from testkit import ROOT, TINY_SONGUNET, clean_env

from bench import ema_replay
from fastui import networks
from fastui.teachers import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    arch = TINY_SONGUNET
    root = tmp_path_factory.mktemp("ema_replay")
    torch.manual_seed(0)
    save_checkpoint(networks.build(arch), root / "teacher")
    args = ["--teacher", str(root / "teacher"), "--out", str(root / "demo"), "--iterations", "3", "--data",
            "synthetic", "--grid-n", "10", "--batch", "10", "--threads", "1", "--no-progress", "--skip-fid",
            "--set", "ema.halflife_images=40", "--set", "ema.rampup=0.5"]
    # a subprocess: the demo initialises a process group and RANK/WORLD_SIZE, which would leak into later tests
    r = subprocess.run([sys.executable, "-m", "bench.ema_replay", "record", str(root / "raw"), *args], cwd=ROOT,
                       env=clean_env(), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def test_the_recording_holds_the_start_and_every_update(recorded):
    files = sorted((recorded / "raw").glob("*.pt"))
    assert [f.name for f in files] == ["00000.pt", "00001.pt", "00002.pt", "00003.pt"]
    teacher = [p.float() for p in load_checkpoint(recorded / "teacher").parameters()]
    assert all(torch.equal(a, b) for a, b in zip(torch.load(files[0]), teacher, strict=True))
    # the generator trains: each update's parameters differ from the previous ones
    for a, b in itertools.pairwise(files):
        assert not all(torch.equal(x, y) for x, y in zip(torch.load(a), torch.load(b)))


def test_replays_the_runs_own_ema_exactly_and_others_by_the_formula(recorded):
    gen = recorded / "demo" / "distill" / "generator_ema"
    out = recorded / "out"
    assert ema_replay.main(["export", str(recorded / "raw"), "--like", str(gen), "--out", str(out),
                            "40:0.5", "1e-6:0", "100:0"]) == 0
    own = list(load_checkpoint(out / "ema_hl40_ru0.5").parameters())
    assert all(torch.equal(a, b) for a, b in zip(own, load_checkpoint(gen).parameters(), strict=True))
    raws = [torch.load(f) for f in sorted((recorded / "raw").glob("*.pt"))]
    last = list(load_checkpoint(out / "ema_hl1e-06_ru0").parameters())
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(last, raws[-1]))
    # half-life 100 images, no ramp-up, 32 images per step: beta = 0.5 ** 0.32 at every step
    beta = 0.5 ** (32 / 100)
    want = raws[0]
    for raw in raws[1:]:
        want = [beta * w + (1 - beta) * r for w, r in zip(want, raw)]
    got = list(load_checkpoint(out / "ema_hl100_ru0").parameters())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, own))


def test_bad_input_is_refused(recorded, tmp_path, capsys):
    gen = recorded / "demo" / "distill" / "generator_ema"
    assert ema_replay.main(["export", str(tmp_path), "--like", str(gen), "--out", str(tmp_path / "o"), "1:0"]) == 2
    assert "holds no recording" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert ema_replay.main(["record", str(recorded / "raw")]) == 2  # not empty: nothing overwritten
    assert "already holds a recording" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ema_replay.main(["export", str(recorded / "raw"), "--like", str(gen), "--out", str(tmp_path / "o"), "1"])
