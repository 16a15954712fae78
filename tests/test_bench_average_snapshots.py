"""``bench.average_snapshots``: the weighted parameter mean of generator checkpoints, loadable like any other; bad
inputs write nothing."""

from __future__ import annotations

import json

import pytest
import torch
from test_bench_trajectory import _ARCH

from bench.average_snapshots import main
from fastui import networks
from fastui.teachers import load_checkpoint, save_checkpoint


def _snapshots(tmp_path, n: int):
    dirs, states = [], []
    for i in range(n):
        torch.manual_seed(i)
        net = networks.build(_ARCH)
        dirs.append(save_checkpoint(net, tmp_path / f"s{i}"))
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    return dirs, states


@pytest.mark.parametrize("weights", [None, [1.0, 3.0, 0.0]])
def test_the_average_is_the_weighted_mean_and_loads_as_a_generator(tmp_path, weights):
    dirs, states = _snapshots(tmp_path, 3)
    out = tmp_path / "avg"
    assert main([*map(str, dirs), "--out", str(out), *(["--weights", *map(str, weights)] if weights else [])]) == 0
    w = torch.tensor(weights or [1.0, 1.0, 1.0], dtype=torch.float64)
    w = w / w.sum()
    loaded = load_checkpoint(out).state_dict()
    floats = [k for k, v in states[0].items() if v.is_floating_point()]
    assert floats and loaded.keys() == states[0].keys()
    for k in floats:
        want = sum(float(w[i]) * states[i][k].double() for i in range(3)).to(states[0][k].dtype)
        assert torch.allclose(loaded[k], want, rtol=1e-6, atol=1e-7), k
    assert not torch.equal(loaded[floats[0]], states[0][floats[0]])
    assert json.loads((out / "averaged_from.json").read_text())["weights"] == pytest.approx(w.tolist())


def test_bad_inputs_write_nothing(tmp_path, capsys):
    dirs, _ = _snapshots(tmp_path, 2)
    other = dict(_ARCH, kwargs=dict(_ARCH["kwargs"], dropout=0.5))
    save_checkpoint(networks.build(_ARCH), tmp_path / "other", arch=other)
    out = tmp_path / "avg"
    for args, why in [([str(dirs[0]), str(tmp_path / "nowhere")], "not a checkpoint directory"),
                      ([str(dirs[0]), str(tmp_path / "other")], "another architecture"),
                      ([*map(str, dirs), "--weights", "1"], "--weights"),
                      ([*map(str, dirs), "--weights", "1", "-1"], "--weights")]:
        assert main([*args, "--out", str(out)]) == 2
        assert why in capsys.readouterr().err and not out.exists()
    out.mkdir()
    assert main([*map(str, dirs), "--out", str(out)]) == 2 and "exists" in capsys.readouterr().err
    assert list(out.iterdir()) == []
