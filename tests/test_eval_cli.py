"""``fastui eval`` end to end, with a stand-in feature extractor (the real network is tested in test_eval_fid)."""

import json

import numpy as np
import pytest
import torch

from fastui.eval import cli, fid


class _PixelFeatures:
    """Stand-in for InceptionFeatures: 6 pixel statistics per image; same interface."""

    def __init__(self, device="cpu", path=None, batch_size=50):
        self.device = torch.device(device)

    def forward_uint8(self, x):
        x = x.double()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).float()

    def features_from_uint8(self, images, batch_size=None, progress=True):
        return self.forward_uint8(fid.to_nchw_uint8(images)).numpy()


@pytest.fixture
def pixel_net(monkeypatch):
    from fastui.eval import sampling

    monkeypatch.setattr(fid, "InceptionFeatures", _PixelFeatures)
    monkeypatch.setattr(sampling, "FEATURE_DIM", 6)


def _images_npz(path, n=40, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8))
    return str(path)


def test_reference_stats_then_fid_of_the_same_images_is_zero(tmp_path, pixel_net, capsys):
    images = _images_npz(tmp_path / "imgs.npz")
    stats_path = tmp_path / "ref.npz"
    assert cli.main(["--ref", images, "--out", str(stats_path), "--device", "cpu", "--no-progress"]) == 0
    with np.load(stats_path) as z:
        assert z["mu"].shape == (6,) and z["sigma"].shape == (6, 6)
    out_json = tmp_path / "r.json"
    assert cli.main(["--ref", str(stats_path), "--images", images, "--device", "cpu", "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    assert result["n"] == 40 and abs(result["fid"]) < 1e-8
    other = _images_npz(tmp_path / "other.npz", seed=1)
    assert cli.main(["--ref", str(stats_path), "--images", other, "--n", "20", "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    assert result["n"] == 20 and result["fid"] > 0.1
    assert "FID@20" in capsys.readouterr().out


def test_unknown_reference_is_a_clear_error_with_exit_code_2(tmp_path, pixel_net, capsys):
    assert cli.main(["--ref", "no-such-dataset", "--out", str(tmp_path / "x.npz")]) == 2
    assert "unknown image source" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    networks = pytest.importorskip("fastui.networks")
    teachers = pytest.importorskip("fastui.teachers")
    pytest.importorskip("fastui.sample")
    arch = networks.tiny_arch(networks.small_unet_arch(img_resolution=8, img_channels=1, label_dim=4))
    torch.manual_seed(0)
    teachers.save_checkpoint(networks.build(arch), tmp_path / "ckpt")
    return str(tmp_path / "ckpt")


@pytest.mark.parametrize("flag,extra", [("--generator", []), ("--teacher", ["--steps", "2"])])
def test_sampler_fid_over_seed_sets_reports_mean_and_std(tmp_path, pixel_net, tiny_checkpoint, flag, extra):
    ref = _images_npz(tmp_path / "imgs.npz")
    out_json = tmp_path / "r.json"
    rc = cli.main([flag, tiny_checkpoint, *extra, "--ref", ref, "--n", "6", "--seeds", "0,1", "--batch", "3",
                   "--no-progress", "--json", str(out_json)])
    assert rc == 0
    result = json.loads(out_json.read_text())
    assert result["seeds"] == [0, 1] and len(result["fid"]) == 2 and result["n"] == 6
    assert result["fid_mean"] == pytest.approx(np.mean(result["fid"]))


def test_shard_directory_reference_reads_back_the_written_images_in_order(tmp_path):
    data_cli = pytest.importorskip("fastui.data.cli")
    from fastui.eval.reference import load_images

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (7, 6, 6, 1), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.arange(7))
    out = tmp_path / "shards"
    assert data_cli.main(["arrays", str(tmp_path / "a.npz"), "--out", str(out), "--shard-size", "3"]) == 0
    np.testing.assert_array_equal(load_images(str(out)), images)
    # the same seeded subset is drawn from the shards as from the original array
    subset = load_images(str(out / "manifest.json"), n=3, seed=1)
    np.testing.assert_array_equal(subset, load_images(str(tmp_path / "a.npz"), n=3, seed=1))
    assert len(subset) == 3
