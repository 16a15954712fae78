"""``bench.disc_probe``: the discriminator probe runs with a saved generator and reports held-out scores by band."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from test_bench_trajectory import _ARCH

from bench import disc_probe
from fastui import networks
from fastui.data.importers import FASHION_MNIST_ROOT
from fastui.teachers import save_checkpoint

pytestmark = pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).exists(), reason="needs dataset-fashion-mnist")


def test_probe_of_a_saved_generator_prints_held_out_loss_and_accuracy(tmp_path, capsys):
    torch.manual_seed(0)
    gen = save_checkpoint(networks.build(_ARCH), tmp_path / "gen")
    disc_probe.main(["--kind", "conv", "--depth", "3", "--dsm", "0", "--steps", "10", "--generator", str(gen),
                     "--held-out", "40"])
    out = capsys.readouterr().out
    assert "conv depth 3 weight 1 dsm 0 step 10: L_disc" in out
    head = re.search(r"held-out \(40 \+ 40 images\): L_disc ([\d.]+), accuracy ([\d.]+)", out)
    assert head and 0 < float(head[1]) < 10 and 0 <= float(head[2]) <= 1
    bands = re.findall(r"sigma in \[[^)]*\): (\d+) pairs", out)
    assert bands and sum(map(int, bands)) == 40


@pytest.mark.parametrize("args", [["--kind", "conv", "--depth", "0"], ["--kind", "conv", "--held-out", "-1"],
                                  ["--kind", "shared", "--depth", "4"]])
def test_probe_rejects_bad_arguments_before_loading_anything(args, capsys):
    with pytest.raises(SystemExit) as e:
        disc_probe.main(args)
    assert e.value.code == 2 and "--depth" in capsys.readouterr().err
