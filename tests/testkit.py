"""Pieces several test files share: a short engine run on the 2-D toy, the tiny demo-shaped teacher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs" / "toy_ring8.toml"
FMNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist (make env installs it)

# a 32x32 one-channel class-conditional SongUNet: the demo teacher's layout at 8 channels
TINY_SONGUNET = {"model": "SongUNet", "img_resolution": 32, "img_channels": 1, "label_dim": 10, "sigma_data": 0.5,
                 "precond": "edm", "kwargs": {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                                              "attn_resolutions": [], "dropout": 0.0,
                                              "embedding_type": "positional", "channel_mult_noise": 1,
                                              "encoder_type": "standard", "decoder_type": "standard",
                                              "resample_filter": [1, 1]}}


def clean_env(**extra: str) -> dict:
    """This process's environment without a launcher's rank variables, one thread, the repository importable."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)} | extra


def run_toy(out: Path, name: str, *extra: str, batch: int, iterations: int,
            fault: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m fastui.train`` on the toy (torch backend, one process, one thread, a small MLP): ``iterations``
    of ``batch``, a checkpoint and a log row after each (10 kept), ``extra`` overrides last; ``fault``: extra
    environment (the engine's ``FASTUI_FAULT_*`` hooks)."""
    env = clean_env(**(fault or {}))
    args = [sys.executable, "-m", "fastui.train", "--config", str(TOY), f"--run.out_dir={out}", f"--run.name={name}",
            f"--run.duration_images={iterations * batch}", f"--run.ckpt_every_images={batch}",
            "--run.grid_every_images=0", "--run.log_every=1", "--run.tensorboard=false", "--run.progress=false",
            "--run.keep_last=10", f"--batch.global_size={batch}", f"--batch.micro={batch}",
            "--engine.backend=torch", "--model.pretrain_steps=50",
            '--model.arch={model = "MLP", dim = 2, hidden = 32, layers = 2}', *extra]
    return subprocess.run(args, env=env, check=False, capture_output=True, text=True, timeout=600, cwd=ROOT)


def fmnist_shards(out: Path, limit: int, shard_size: int = 1000) -> Path:
    """The first ``limit`` Fashion-MNIST training images, padded to 32x32, as shards of ``shard_size`` in ``out``."""
    subprocess.run([sys.executable, "-m", "fastui.data.cli", "fashion-mnist", "--root", str(FMNIST), "--out",
                    str(out), "--pad-to", "32", "--limit", str(limit), "--shard-size", str(shard_size)], check=True,
                   capture_output=True, cwd=ROOT)
    return out


def mlp_uni_config(batch: int, micro: int | None = None, backend: str = "torch"):
    """The small engine run several tests share: a random 4-wide MLP teacher, uni / fkl with the conv discriminator
    head, synthetic data, no warm-up, fp32; ``batch`` images per step in micro-batches of ``micro`` (default all)."""
    from fastui.train.config import Config

    cfg = Config()
    cfg.teacher.spec = "random"
    cfg.teacher.arch = {"model": "MLP", "dim": 4, "hidden": 16, "layers": 2}
    cfg.loss.method, cfg.loss.divergence = "uni", "fkl"
    cfg.schedule.warmup_images = cfg.schedule.ratio_start_images = 0
    cfg.batch.global_size, cfg.batch.micro = batch, micro or batch
    cfg.data.source = "synthetic"
    cfg.discriminator.kind = "conv"
    cfg.engine.backend, cfg.engine.precision = backend, "fp32"
    return cfg
