"""``bench.fork_head``: a checkpoint forked with a new discriminator head loads into a fake engine of the new depth,
keeps everything else bit-identical, and bad input leaves nothing behind."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from bench import fork_head
from fastui.data.importers import FASHION_MNIST_ROOT
from fastui.teachers import load_teacher
from fastui.train.models import FakeScoreWithDisc

SHAPE = (1, 32, 32)


def _fake_engine(depth: int):
    net = FakeScoreWithDisc(copy.deepcopy(load_teacher("demo")), "conv", SHAPE, 64, depth).requires_grad_(True)
    return net, torch.optim.Adam(net.parameters(), lr=1e-4)  # the torch engine's order: module.parameters()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A torch-backend checkpoint directory of a depth-2 run after one fake-engine Adam step."""
    root = tmp_path_factory.mktemp("src") / "run" / "checkpoints" / "ckpt-000000007"
    torch.manual_seed(0)
    net, opt = _fake_engine(2)
    x, sigma = torch.randn(2, *SHAPE), torch.full((2,), 0.5)
    d, lf, lr = net(x, sigma, None, mode="train", real=torch.randn(2, *SHAPE), real_labels=None)
    (d.square().mean() + lf.mean() - lr.mean()).backward()
    opt.step()
    (root / "fake").mkdir(parents=True)
    (root / "generator").mkdir()
    torch.save({"module": net.state_dict(), "optimizer": opt.state_dict(), "micro_steps": 1}, root / "fake" / "fake.pt")
    gen = load_teacher("demo")
    torch.save({"module": gen.state_dict(), "optimizer": {}, "micro_steps": 1}, root / "generator" / "generator.pt")
    (root / "meta.json").write_text(json.dumps({"iteration": 7, "images": 224, "world": 1, "backend": "torch"}))
    torch.save({"ema": {"shadow": [torch.ones(3)]}, "data": None, "rng": None}, root / "rank00000.pt")
    return root


def test_fork_replaces_only_the_head_and_loads_into_an_engine_of_the_new_depth(ckpt, tmp_path):
    dest = fork_head.fork(ckpt, tmp_path / "fork", depth=4, seed=1)
    assert dest == tmp_path / "fork" / "checkpoints" / ckpt.name
    old = torch.load(ckpt / "fake" / "fake.pt", weights_only=True)
    new = torch.load(dest / "fake" / "fake.pt", weights_only=True)
    net, opt = _fake_engine(4)
    net.load_state_dict(new["module"])  # strict: exactly the depth-4 structure
    opt.load_state_dict(new["optimizer"])
    for k, v in old["module"].items():
        if not k.startswith("head."):
            assert torch.equal(new["module"][k], v), k
    n_fake = sum(1 for _ in net.fake.parameters())
    assert sorted(new["optimizer"]["state"]) == list(range(n_fake))  # the new head starts with empty Adam state
    for i in range(n_fake):
        assert torch.equal(new["optimizer"]["state"][i]["exp_avg"], old["optimizer"]["state"][i]["exp_avg"])
    torch.manual_seed(1)
    fresh = fork_head.PixelHead(SHAPE, 64, 4)
    for k, v in fresh.state_dict().items():
        assert torch.equal(new["module"][f"head.{k}"], v)
    for f in ("meta.json", "rank00000.pt", "generator/generator.pt"):
        assert (dest / f).read_bytes() == (ckpt / f).read_bytes()
    # the forked optimizer steps: the head's parameters get state, the fake score's keep theirs
    x, sigma = torch.randn(2, *SHAPE), torch.full((2,), 0.5)
    _, lf, lr = net(x, sigma, None, mode="train", real=torch.randn(2, *SHAPE), real_labels=None)
    (lf.mean() - lr.mean()).backward()
    opt.step()
    assert len(opt.state) == n_fake + sum(1 for _ in net.head.parameters())


def test_existing_destination_and_headless_checkpoints_are_refused_and_nothing_is_written(ckpt, tmp_path, capsys):
    fork_head.fork(ckpt, tmp_path / "fork", depth=3)
    before = (tmp_path / "fork" / "checkpoints" / ckpt.name / "fake" / "fake.pt").read_bytes()
    assert fork_head.main([str(ckpt), str(tmp_path / "fork"), "--depth", "5"]) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "fork" / "checkpoints" / ckpt.name / "fake" / "fake.pt").read_bytes() == before
    assert [p.name for p in (tmp_path / "fork" / "checkpoints").iterdir()] == [ckpt.name]
    assert fork_head.main([str(ckpt.parent), str(tmp_path / "other"), "--depth", "3"]) == 2
    assert "not a complete" in capsys.readouterr().err and not (tmp_path / "other").exists()


@pytest.mark.parametrize("args", [["--depth", "0"], ["--depth", "9"], ["--depth", "2", "--pool", "0"],
                                  ["--depth", "2", "--pretrain-steps", "-1"]])
def test_bad_arguments_exit_2_before_reading_anything(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        fork_head.main([str(tmp_path / "missing"), str(tmp_path / "out"), *args])
    assert e.value.code == 2 and "--depth" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).exists(), reason="needs dataset-fashion-mnist")
def test_pretraining_lowers_the_discriminator_loss_below_chance(ckpt, tmp_path, capsys):
    fork_head.fork(ckpt, tmp_path / "fork", depth=3, pretrain_steps=60, batch=32, pool=256, seed=0)
    out = capsys.readouterr().out
    losses = [float(v) for v in re.findall(r"L_disc ([\d.]+)", out)]
    assert losses and losses[-1] < 1.3  # 2 ln 2 = 1.386 is chance; the teacher's samples are told from real ones


def test_fork_keeps_a_separate_head_group(ckpt, tmp_path):
    """A checkpoint whose fake engine has the head in its own Adam group (``discriminator.lr``) forks into the same
    two groups, the head's holding the new head's parameters."""
    src = tmp_path / "src" / "checkpoints" / ckpt.name
    src.parent.mkdir(parents=True)
    shutil.copytree(ckpt, src)
    state = torch.load(src / "fake" / "fake.pt", weights_only=True)
    ids = state["optimizer"]["param_groups"][0]["params"]
    n_head = sum(1 for k in state["module"] if k.startswith("head.") and k.endswith((".weight", ".bias")))
    base = state["optimizer"]["param_groups"][0]
    state["optimizer"]["param_groups"] = [{**base, "params": ids[:-n_head]},
                                          {**base, "lr": 1e-3, "params": ids[-n_head:]}]
    torch.save(state, src / "fake" / "fake.pt")
    dest = fork_head.fork(src, tmp_path / "fork", depth=4)
    groups = torch.load(dest / "fake" / "fake.pt", weights_only=True)["optimizer"]["param_groups"]
    net, _ = _fake_engine(4)
    n_fake, n_new = sum(1 for _ in net.fake.parameters()), sum(1 for _ in net.head.parameters())
    assert groups[0]["params"] == list(range(n_fake))
    assert groups[1]["params"] == list(range(n_fake, n_fake + n_new)) and groups[1]["lr"] == 1e-3
    head = [p for n, p in net.named_parameters() if n.startswith("head.")]
    body = [p for n, p in net.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.Adam([{"params": body}, {"params": head, "lr": 1e-3}], lr=1e-4)
    opt.load_state_dict(torch.load(dest / "fake" / "fake.pt", weights_only=True)["optimizer"])
