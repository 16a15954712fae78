"""The 8-Gaussian toy trains through the engine (configs/toy_ring8.toml) as well as the standalone toy loop.

Both get the same budget (400 generator steps of 1024 samples after a 600-step DSM fit to the teacher) and are scored
by energy distance to teacher samples (fastui.toy's metric, same evaluation seed). The engine's sample comes from its
exported EMA generator (contract-2 checkpoint), so the export is exercised too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 400


@pytest.mark.slow
def test_ring8_through_engine_matches_toy_loop_energy_distance(tmp_path):
    from fastui.analytic import ring8
    from fastui.toy import ToyConfig, energy_distance, train
    from fastui.train.mlp import MLPDenoiser

    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "fastui.train", "--config", "configs/toy_ring8.toml",
                        f"--run.out_dir={tmp_path}", "--run.name=toy", f"--run.duration_images={STEPS * 1024}",
                        "--run.progress=false", "--run.tensorboard=false"], env=env, check=False,
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    export = tmp_path / "toy" / "generator_ema"
    net = MLPDenoiser(json.loads((export / "arch.json").read_text()))
    net.load_state_dict(torch.load(export / "weights.pt", weights_only=True))
    g = torch.Generator().manual_seed(10_000)
    z = torch.randn(4000, 2, generator=g)
    with torch.no_grad():
        student = net(2.5 * z, torch.full((4000,), 2.5))
    teacher = ring8()
    reference = teacher.sample(4000, generator=g)
    ed_engine = energy_distance(student, reference)
    ed_prior = energy_distance(2.5 * z, reference)  # what an untrained identity map would give
    toy = train(ToyConfig(steps=STEPS))
    assert ed_engine < 0.1 * ed_prior
    assert ed_engine < 1.5 * toy.energy_distance + 2e-3, (ed_engine, toy.energy_distance)
