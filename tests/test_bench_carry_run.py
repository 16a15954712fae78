"""``bench/carry_run.py``: a run's checkpoint packed small enough to travel to a lent GPU and back.

On the 2-D toy (torch backend, CPU): a pack with fp32 moments, unpacked into another run directory, resumes
bit-identically to the original checkpoint, both when Adam's first moments are dropped (beta1 = 0) and when they travel
(beta1 = 0.9); with bf16 moments only the moments differ, by bf16 rounding. Errors write nothing; the Fashion-MNIST
subset reads back through the importer.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import run_toy

from bench.carry_run import main

BATCH = 256


def _run(out: Path, name: str, iterations: int, *extra: str):
    r = run_toy(out, name, *extra, batch=BATCH, iterations=iterations)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _state(run: Path, iteration: int, name: str) -> dict:
    return torch.load(run / "checkpoints" / f"ckpt-{iteration:09d}" / name / f"{name}.pt", map_location="cpu",
                      weights_only=True)


def _moved(tmp: Path, name: str, *pack_args: str) -> Path:
    """A fresh run directory holding only the packed-and-unpacked newest checkpoint of ``tmp/name``."""
    src, pack, dst = tmp / name, tmp / f"{name}.pack", tmp / f"{name}-moved"
    assert main(["pack", str(src), str(pack), "--part-mib", "0.01", *pack_args]) == 0
    assert len(json.loads((pack / "manifest.json").read_text())["parts"]) > 1  # the parts join up again
    assert main(["unpack", str(pack), str(dst)]) == 0
    return dst


@pytest.mark.parametrize("beta1", ["0", "0.9"])
def test_a_pack_with_exact_moments_resumes_bit_identically(tmp_path, beta1):
    opt = f"--optim.beta1={beta1}"
    _run(tmp_path, "a", 3, opt)
    moved = _moved(tmp_path, "a", "--exact-moments")
    for run in (tmp_path / "a", moved):
        shutil.rmtree(run / "checkpoints" / "ckpt-000000001", ignore_errors=True)
        shutil.rmtree(run / "checkpoints" / "ckpt-000000002", ignore_errors=True)
        _run(run.parent, run.name, 5, opt, "--resume", "auto")
    for name in ("generator", "fake"):
        a, b = _state(tmp_path / "a", 5, name), _state(moved, 5, name)
        for k in a["module"]:
            assert torch.equal(a["module"][k], b["module"][k]), (name, k)
        for i, s in a["optimizer"]["state"].items():
            for k, v in s.items():
                assert torch.equal(v, b["optimizer"]["state"][i][k]), (name, i, k)
    manifest = json.loads((tmp_path / "a.pack" / "manifest.json").read_text())
    assert (manifest["first_moments_dropped"] > 0) == (beta1 == "0")


def test_a_pack_with_bf16_moments_changes_only_the_moments(tmp_path):
    _run(tmp_path, "b", 2)
    moved = _moved(tmp_path, "b")
    for name in ("generator", "fake"):
        a, b = _state(tmp_path / "b", 2, name), _state(moved, 2, name)
        assert all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"])
        for i, s in a["optimizer"]["state"].items():
            t = b["optimizer"]["state"][i]
            assert torch.equal(s["step"], t["step"]) and t["exp_avg_sq"].dtype == torch.float32
            assert torch.equal(t["exp_avg"], torch.zeros_like(s["exp_avg"]))  # beta1 = 0: overwritten before use
            assert torch.allclose(t["exp_avg_sq"], s["exp_avg_sq"], rtol=2**-8, atol=0)
            assert not torch.equal(t["exp_avg_sq"], s["exp_avg_sq"])
    ra = torch.load(tmp_path / "b" / "checkpoints" / "ckpt-000000002" / "rank00000.pt", weights_only=False)
    rb = torch.load(moved / "checkpoints" / "ckpt-000000002" / "rank00000.pt", weights_only=False)
    assert ra["data"] == rb["data"] and torch.equal(ra["rng"]["torch"], rb["rng"]["torch"])
    assert all(torch.equal(u, v) for u, v in zip(ra["ema"]["shadow"], rb["ema"]["shadow"], strict=True))
    _run(moved.parent, moved.name, 3, "--resume", "auto")  # and it trains on


def _left(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.rglob(".tmp-*"))


def test_errors_write_nothing(tmp_path, capsys):
    assert main(["pack", str(tmp_path / "none"), str(tmp_path / "p")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err and not (tmp_path / "p").exists()
    _run(tmp_path, "c", 2)
    pack = tmp_path / "c.pack"
    for bad in (["--part-mib", "0"], ["--part-mib", "17"], ["--fmnist", str(tmp_path / "nowhere")]):
        assert main(["pack", str(tmp_path / "c"), str(pack), *bad]) == 2
        assert not pack.exists() and _left(tmp_path) == []
    assert "not found" in capsys.readouterr().err
    assert main(["pack", str(tmp_path / "c"), str(pack), "--part-mib", "0.01"]) == 0
    assert main(["pack", str(tmp_path / "c"), str(pack)]) == 2  # not empty
    # the run itself already holds this iteration
    assert main(["unpack", str(pack), str(tmp_path / "c")]) == 2
    assert "as new as the pack's" in capsys.readouterr().err
    part = pack / "ckpt.xz.001"
    part.write_bytes(part.read_bytes()[:-1] + b"x")
    assert main(["unpack", str(pack), str(tmp_path / "d")]) == 2
    assert "corrupt" in capsys.readouterr().err and not (tmp_path / "d").exists() and _left(tmp_path) == []


def test_a_returned_pack_must_continue_the_runs_newest_checkpoint(tmp_path, capsys):
    _run(tmp_path, "home", 2)
    shutil.copytree(tmp_path / "home", tmp_path / "fork")
    moved = _moved(tmp_path, "home")  # "on the GPU": remembers that it started from home's ckpt 2
    assert json.loads((moved / "carried_from.json").read_text())["checkpoint"] == "ckpt-000000002"
    _run(moved.parent, moved.name, 5, "--resume", "auto")
    back = tmp_path / "back.pack"
    assert main(["pack", str(moved), str(back)]) == 0
    assert json.loads((back / "manifest.json").read_text())["continues"]["checkpoint"] == "ckpt-000000002"
    _run(tmp_path, "fork", 3, "--resume", "auto")  # the CPU run went on meanwhile, to ckpt 3
    assert main(["unpack", str(back), str(tmp_path / "fork")]) == 2
    assert "would fork its trajectory" in capsys.readouterr().err
    assert not (tmp_path / "fork" / "checkpoints" / "ckpt-000000005").exists() and _left(tmp_path) == []
    assert main(["unpack", str(back), str(tmp_path / "fork"), "--force"]) == 0
    assert main(["unpack", str(back), str(tmp_path / "home")]) == 0  # home stood still: it takes the GPU's ckpt 5
    assert (tmp_path / "home" / "checkpoints" / "ckpt-000000005" / "meta.json").is_file()
    assert not (tmp_path / "home" / "carried_from.json").exists()


def test_a_second_pack_of_the_same_run_goes_on_from_the_first(tmp_path, capsys):
    """The GPU trains on after its first pack and packs again: home takes both, in order, without --force."""
    _run(tmp_path, "home", 2)
    moved = _moved(tmp_path, "home")
    _run(moved.parent, moved.name, 4, "--resume", "auto")
    first, second = tmp_path / "first.pack", tmp_path / "second.pack"
    assert main(["pack", str(moved), str(first)]) == 0
    _run(moved.parent, moved.name, 6, "--resume", "auto")
    assert main(["pack", str(moved), str(second)]) == 0
    ids = [json.loads((p / "manifest.json").read_text())["id"] for p in (first, second)]
    assert ids[0] != ids[1]
    assert json.loads((second / "manifest.json").read_text())["continues"]["packs"] == ids[:1]
    shutil.copytree(tmp_path / "home", tmp_path / "other")
    _run(tmp_path, "other", 3, "--resume", "auto")  # went on by itself: neither ckpt 2 nor the first pack's ckpt 4
    assert main(["unpack", str(second), str(tmp_path / "other")]) == 2
    assert "would fork its trajectory" in capsys.readouterr().err
    home = tmp_path / "home" / "checkpoints"
    assert main(["unpack", str(first), str(tmp_path / "home")]) == 0
    assert json.loads((home / "ckpt-000000004" / "carried.json").read_text())["pack"] == ids[0]
    assert main(["unpack", str(second), str(tmp_path / "home")]) == 0  # on top of the first: no --force needed
    assert (home / "ckpt-000000006" / "meta.json").is_file() and _left(tmp_path) == []
    a, b = _state(tmp_path / "home", 6, "generator"), _state(moved, 6, "generator")  # the GPU's last parameters
    assert all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"])


def test_the_plan_of_bench_cpu_long_travels_with_the_pack(tmp_path, capsys):
    _run(tmp_path, "home", 2)
    plan = "end=448000\nstage4=--optim.lr_decay_start=0.75 --optim.lr_decay_final=0.1\n"
    (tmp_path / "home" / "cpu_long.plan").write_text(plan)
    shutil.copytree(tmp_path / "home", tmp_path / "other")
    moved = _moved(tmp_path, "home")  # "on the GPU": bench/cpu_long.sh there finds the plan
    assert (moved / "cpu_long.plan").read_text() == plan
    _run(moved.parent, moved.name, 3, "--resume", "auto")
    back = tmp_path / "back.pack"
    assert main(["pack", str(moved), str(back)]) == 0
    (tmp_path / "other" / "cpu_long.plan").write_text("end=\nstage4=\n")  # another plan: refused, nothing written
    assert main(["unpack", str(back), str(tmp_path / "other")]) == 2
    assert "nothing written; --force takes the pack" in capsys.readouterr().err
    assert not (tmp_path / "other" / "checkpoints" / "ckpt-000000003").exists() and _left(tmp_path) == []
    assert main(["unpack", str(back), str(tmp_path / "home")]) == 0  # the same plan
    assert (tmp_path / "home" / "checkpoints" / "ckpt-000000003" / "meta.json").is_file()
    assert (tmp_path / "home" / "cpu_long.plan").read_text() == plan


def test_a_run_with_only_a_plan_packs_a_new_trajectory(tmp_path, capsys):
    """No checkpoint yet, a plan: the pack starts the trajectory where it is unpacked, and a trajectory trained there
    comes back as any pack does (a first move: its destination here may be empty)."""
    plan = "end=448000\nstage4=--optim.lr_decay_start=0.75 --optim.lr_decay_final=0.1\n"
    home = tmp_path / "home"
    home.mkdir()
    (home / "cpu_long.plan").write_text(plan)
    pack = tmp_path / "fresh.pack"
    assert main(["pack", str(home), str(pack)]) == 0
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["checkpoint"] is None and manifest["plan"] == plan and manifest["parts"] == []
    _run(tmp_path, "busy", 2)  # a run with a checkpoint does not start over: refused, nothing written
    assert main(["unpack", str(pack), str(tmp_path / "busy")]) == 2
    assert "starts a new trajectory" in capsys.readouterr().err and not (tmp_path / "busy" / "cpu_long.plan").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cpu_long.plan").write_text("end=\nstage4=\n")  # another plan: refused
    assert main(["unpack", str(pack), str(tmp_path / "other")]) == 2
    assert (tmp_path / "other" / "cpu_long.plan").read_text() == "end=\nstage4=\n"
    gpu = tmp_path / "gpu"
    assert main(["unpack", str(pack), str(gpu)]) == 0  # "on the GPU": the plan, no checkpoint
    assert (gpu / "cpu_long.plan").read_text() == plan and not (gpu / "checkpoints").exists()
    _run(tmp_path, "gpu", 3)  # trained there from the start
    back = tmp_path / "back.pack"
    assert main(["pack", str(gpu), str(back)]) == 0
    assert json.loads((back / "manifest.json").read_text())["plan"] == plan
    assert main(["unpack", str(back), str(home)]) == 0
    assert (home / "checkpoints" / "ckpt-000000003" / "meta.json").is_file() and _left(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pack", str(empty), str(tmp_path / "p")]) == 2  # neither a checkpoint nor a plan
    assert "no cpu_long.plan there" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_the_fashion_mnist_subset_reads_back(tmp_path):
    from fastui.data.importers import fashion_mnist

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 10, 50).astype(np.uint8)
    root = tmp_path / "fm"
    root.mkdir()
    for name, arr in (("train-images-idx3-ubyte.gz", x), ("train-labels-idx1-ubyte.gz", y)):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (root / name).write_bytes(gzip.compress(header + arr.tobytes()))
    _run(tmp_path, "e", 1)
    pack = tmp_path / "e.pack"
    assert main(["pack", str(tmp_path / "e"), str(pack), "--fmnist", str(root), "--images", "20"]) == 0
    images, labels, _ = fashion_mnist(pack / "fmnist", "train")
    assert np.array_equal(images[..., 0], x[:20]) and np.array_equal(labels, y[:20].astype(np.int64))
    assert main(["pack", str(tmp_path / "e"), str(tmp_path / "e2"), "--fmnist", str(root), "--images", "51"]) == 2
    assert not (tmp_path / "e2").exists() and _left(tmp_path) == []
