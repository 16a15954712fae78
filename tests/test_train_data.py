"""The engine on real shards: real images for the discriminator and class labels from the data stream
(``batch.labels = "data"``), with the loader position saved in every rank's checkpoint file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _shards(out: Path, size: int) -> Path:
    from fastui.data.importers import ArraySource
    from fastui.data.writer import write_shards

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(48, size, size, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=48).astype(np.int64)
    src = ArraySource(name="random", class_names=[str(i) for i in range(10)], images=images, labels=labels)
    write_shards(src, out, shard_size=16, progress=False)
    return out


def _train(tmp_path: Path, data: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "fastui.train", "--config", "configs/tiny_cpu.toml",
                           f"--run.out_dir={tmp_path / 'runs'}", "--run.name=data", f"--data.source={data}",
                           "--batch.labels=data", "--engine.backend=torch", "--engine.zero_stage=0",
                           "--run.duration_images=16", "--run.progress=false", "--run.tensorboard=false"],
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
