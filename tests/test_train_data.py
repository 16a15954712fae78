"""The engine on real shards: real images for the discriminator and class labels from the data stream
(``batch.labels = "data"``), with the loader position saved in every rank's checkpoint file, and a resume on other
shards (an error that names ``data.resume_position``, or the stream started over with it false)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _shards(out: Path, size: int, n: int = 48) -> Path:
    from fastui.data.importers import ArraySource
    from fastui.data.writer import write_shards

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    src = ArraySource(name="random", class_names=[str(i) for i in range(10)], images=images, labels=labels)
    write_shards(src, out, shard_size=16, progress=False)
    return out


def _train(tmp_path: Path, data: Path, *extra: str, images: int = 16):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "fastui.train", "--config", "configs/tiny_cpu.toml",
                           f"--run.out_dir={tmp_path / 'runs'}", "--run.name=data", f"--data.source={data}",
                           "--batch.labels=data", "--engine.backend=torch", "--engine.zero_stage=0",
                           f"--run.duration_images={images}", "--run.progress=false", "--run.tensorboard=false",
                           *extra],
                          check=False, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_training_on_shards_with_data_labels_saves_the_loader_position(tmp_path):
    r = _train(tmp_path, _shards(tmp_path / "shards", 16))
    assert r.returncode == 0, r.stderr[-3000:]
    per_rank = torch.load(tmp_path / "runs" / "data" / "checkpoints" / "ckpt-000000002" / "rank00000.pt",
                          weights_only=False)
    assert per_rank["data"] is not None and per_rank["data"]["batch_size"] == 4
    assert (tmp_path / "runs" / "data" / "log.csv").read_text().count("\n") >= 2


def test_shards_of_the_wrong_image_size_are_a_config_error(tmp_path):
    r = _train(tmp_path, _shards(tmp_path / "shards", 8))
    assert r.returncode == 2
    assert "shape" in r.stderr and "(1, 8, 8)" in r.stderr


def _position(tmp_path: Path, iteration: int) -> dict:
    path = tmp_path / "runs" / "data" / "checkpoints" / f"ckpt-{iteration:09d}" / "rank00000.pt"
    return torch.load(path, weights_only=False)["data"]


def test_a_resume_on_other_shards_names_the_setting_that_starts_the_stream_over(tmp_path):
    first = _train(tmp_path, _shards(tmp_path / "a", 16), "--run.ckpt_every_images=8")
    assert first.returncode == 0, first.stderr[-3000:]
    assert _position(tmp_path, 2)["num_shards"] == 3
    other = _shards(tmp_path / "b", 16, n=80)  # 5 shards of 16
    config = (tmp_path / "runs" / "data" / "config.json").read_text()
    refused = _train(tmp_path, other, "--resume", "auto", images=32)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "num_shards was 3, now 5" in refused.stderr and "--data.resume_position=false" in refused.stderr
    assert not (tmp_path / "runs" / "data" / "checkpoints" / "ckpt-000000003").exists()  # nothing trained
    assert (tmp_path / "runs" / "data" / "config.json").read_text() == config  # nor the run's settings rewritten
    moved = _train(tmp_path, other, "--resume", "auto", "--data.resume_position=false", "--run.ckpt_every_images=8",
                   images=32)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "resumed from" in moved.stdout and "the data stream starts over" in moved.stdout
    fresh = _train(tmp_path / "fresh", other)  # the same 16 images drawn by a new run on these shards
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    after, new = _position(tmp_path, 4), _position(tmp_path / "fresh", 2)
    assert after["num_shards"] == 5 and after == new
    again = _train(tmp_path, other, "--resume", "auto", images=40)  # same shards: the position is continued
    assert again.returncode == 0, again.stderr[-3000:]
    assert "starts over" not in again.stdout
