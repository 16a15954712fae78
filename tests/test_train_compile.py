"""``model.compile = true``: the engine's iteration through ``torch.compile``d networks (inductor on the CPU) computes
what the eager one does, writes checkpoints with the eager parameter names, and resumes from them (also into an
eager run). The 2-D toy (MLP networks) keeps the compilation to seconds."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64


def _train(out: Path, name: str, images: int, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = [sys.executable, "-m", "fastui.train", "--config", str(ROOT / "configs" / "toy_ring8.toml"),
            f"--run.out_dir={out}", f"--run.name={name}", f"--run.duration_images={images}",
            f"--run.ckpt_every_images={2 * BATCH}", "--run.grid_every_images=0", "--run.log_every=1",
            "--run.tensorboard=false", "--run.progress=false", "--run.keep_last=4", "--model.pretrain_steps=2",
            f"--batch.global_size={BATCH}", f"--batch.micro={BATCH}", "--discriminator.channels=16",
            '--model.arch={model = "MLP", dim = 2, hidden = 32, layers = 2}', *extra]
    return subprocess.run(args, env=env, check=False, capture_output=True, text=True, timeout=900, cwd=ROOT)


def _log(run: Path) -> list[dict]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def _weights(run: Path, ckpt: str) -> dict:
    return torch.load(run / "checkpoints" / ckpt / "generator" / "generator.pt", map_location="cpu",
                      weights_only=True)["module"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile")
    eager = _train(out, "eager", 4 * BATCH)
    assert eager.returncode == 0, eager.stderr[-3000:]
    assert "torch.compile" not in eager.stdout
    comp = _train(out, "comp", 2 * BATCH, "--model.compile=true")
    assert comp.returncode == 0, comp.stderr[-3000:]
    assert "torch.compile (mode default)" in comp.stdout
    resumed = _train(out, "comp", 4 * BATCH, "--model.compile=true", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"eager": out / "eager", "comp": out / "comp", "resumed": resumed}


def test_compiled_iterations_log_what_the_eager_ones_do(runs):
    eager, comp = _log(runs["eager"]), _log(runs["comp"])
    assert [r["iteration"] for r in comp] == ["1", "2", "3", "4"]  # two iterations, then two more after the resume
    for e, c in zip(eager, comp):
        for key in ("loss_g", "loss_fake"):
            assert float(c[key]) == pytest.approx(float(e[key]), rel=1e-3, abs=1e-3), (e["iteration"], key)


def test_compiled_checkpoints_keep_the_eager_parameter_names_and_values(runs):
    eager, comp = _weights(runs["eager"], "ckpt-000000004"), _weights(runs["comp"], "ckpt-000000004")
    assert comp.keys() == eager.keys() and not any("_orig_mod" in k for k in comp)
    # Adam with beta1 = 0 moves an entry by ~lr (1e-3) whatever its gradient's size, so an entry whose gradient is
    # at rounding level may move the other way in one of the two runs: nearly all entries agree, none by much more
    diff = torch.cat([(comp[k].float() - eager[k].float()).abs().flatten() for k in eager])
    assert (diff <= 1e-4).float().mean() >= 0.999 and diff.max() <= 1e-2, (diff.max(), (diff > 1e-4).sum())


def test_compiled_run_resumes_its_checkpoint(runs):
    assert "resumed from" in runs["resumed"].stdout and "ckpt-000000002" in runs["resumed"].stdout


def test_an_unknown_compile_mode_is_a_config_error():
    from fastui.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="compile_mode"):
        load_config(str(ROOT / "configs" / "toy_ring8.toml"), ["--model.compile_mode=fast"])


def test_a_compiled_run_sees_a_refreshed_discriminator_head(tmp_path):
    """The refresh copies new weights into the (compiled) fake engine's head in place: the compiled graphs must read
    them, so the density ratio and the losses after each refresh are the eager run's."""
    refresh = ("--discriminator.refresh_every_images=64", "--discriminator.refresh_steps=20",
               "--discriminator.refresh_pool=128")
    eager = _train(tmp_path, "eager", 3 * BATCH, *refresh)
    comp = _train(tmp_path, "comp", 3 * BATCH, *refresh, "--model.compile=true")
    for r in (eager, comp):
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.count("fresh discriminator head") == 3, r.stdout
    e, c = _log(tmp_path / "eager"), _log(tmp_path / "comp")
    assert len(e) == len(c) == 3
    for re_, rc in zip(e, c):
        for key in ("loss_g", "loss_fake", "log_ratio_abs", "loss_disc"):
            assert float(rc[key]) == pytest.approx(float(re_[key]), rel=1e-3, abs=1e-3), (re_["iteration"], key)
