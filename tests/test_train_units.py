"""Engine pieces in isolation (no process group): noise schedules, EMA decay, gradient guard, draws, checkpoints."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fastui.train import checkpoint as ckpt
from fastui.train.config import Config, resolve
from fastui.train.engines import _GradGuard
from fastui.train.schedule import ema_beta, karras_sigma, phase, sample_sigma
from fastui.train.step import Draws, Stats

ROOT_DIR = Path(__file__).resolve().parent.parent


def test_karras_levels_with_t_max_800_span_0_002_to_24_4():
    g = torch.Generator().manual_seed(0)
    s = sample_sigma("karras", 20000, g, "cpu", t_max=800.0)
    assert s.min() >= 0.002 - 1e-6 and s.min() < 0.003
    # MATH §2: u <= 0.8 gives sigma <= (80^(1/7) + 0.2 (0.002^(1/7) - 80^(1/7)))^7 = 24.4
    top = karras_sigma(torch.tensor(0.8))
    assert abs(top.item() - 24.4) < 0.1 and s.max() <= top + 1e-4 and s.max() > 0.9 * top


def test_karras_index_stays_inside_levels_20_to_980():
    g = torch.Generator().manual_seed(0)
    s = sample_sigma("karras_index", 20000, g, "cpu")
    lo, hi = karras_sigma(torch.tensor(20 / 999)), karras_sigma(torch.tensor(980 / 999))
    assert s.min() >= lo - 1e-6 and s.max() <= hi + 1e-4
    assert s.min() > 0.002 and s.max() < 80.0


def test_lognormal_sigma_has_the_configured_log_moments():
    g = torch.Generator().manual_seed(0)
    ls = sample_sigma("lognormal", 100000, g, "cpu", p_mean=-1.2, p_std=1.2).log()
    assert abs(ls.mean().item() + 1.2) < 0.02 and abs(ls.std().item() - 1.2) < 0.02


def test_ema_half_life_in_images():
    beta = ema_beta(10**9, 256, halflife_images=500_000, rampup=0.05)
    assert math.isclose(beta ** (500_000 / 256), 0.5, rel_tol=1e-9)
    early = ema_beta(10_000, 256, halflife_images=500_000, rampup=0.05)  # ramp-up: half-life 500 images
    assert math.isclose(early ** (500 / 256), 0.5, rel_tol=1e-9)


def test_phase_follows_the_image_counter():
    assert not phase(99_999, 100_000, 200_000).generator_step
    p = phase(100_000, 100_000, 200_000)
    assert p.generator_step and not p.ratio_on
    assert phase(200_000, 100_000, 200_000).ratio_on


def test_grad_guard_zeroes_and_counts_non_finite_entries_and_clips():
    lin = torch.nn.Linear(3, 1, bias=False)
    guard = _GradGuard(lin.parameters(), "cpu", clip=1.0)
    x = torch.tensor([[float("nan"), 5.0, 0.1]])
    lin(x).sum().backward()
    assert torch.equal(lin.weight.grad, torch.tensor([[0.0, 1.0, 0.1]]))
    assert int(guard.count) == 1


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_grad_guard_step_form_matches_the_hook_form(clip):
    """``apply`` (once per step, one concatenated copy) cleans, clips and counts exactly as the per-parameter hooks,
    for contiguous and channels-last gradients, and returns the global norm of the cleaned gradients."""
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (4,), (5, 7), (2, 4, 1, 1)]
    raw = [torch.randn(s, generator=g) for s in shapes]
    raw[0][1, 2, 0, 1], raw[1][3], raw[2][4, 0], raw[2][0, 6] = float("nan"), float("inf"), -float("inf"), float("nan")
    hook_guard = _GradGuard([], "cpu", clip=clip)
    want = [hook_guard._clean(r.clone()) for r in raw]
    grads = [r.clone() for r in raw]
    grads[0] = grads[0].contiguous(memory_format=torch.channels_last)
    grads[2] = grads[2].t().contiguous().t()  # neither contiguous nor channels-last: the one-at-a-time path
    step_guard = _GradGuard([], "cpu", clip=clip, hooks=False)
    norm = step_guard.apply(grads)
    for got, w in zip(grads, want):
        assert torch.equal(got, w)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)
    assert int(step_guard.count) == int(hook_guard.count) == 4
    assert torch.allclose(norm, torch.linalg.vector_norm(torch.cat([w.reshape(-1) for w in want])))


def _ctx(world: int, rank: int, noise: str):
    cfg = Config()
    cfg.batch.noise, cfg.batch.global_size, cfg.batch.micro = noise, 8, 8 // world
    return SimpleNamespace(cfg=cfg, res=resolve(cfg, world), rank=rank, device=torch.device("cpu"))


def test_global_draws_do_not_depend_on_the_number_of_ranks():
    one = Draws(_ctx(1, 0, "global"), 3, 1, 0).randn((2,))
    halves = [Draws(_ctx(2, r, "global"), 3, 1, 0).randn((2,)) for r in (0, 1)]
    assert torch.equal(one, torch.cat(halves))
    per_rank = [Draws(_ctx(2, r, "per_rank"), 3, 1, 0).randn((2,)) for r in (0, 1)]
    assert not torch.equal(per_rank[0], per_rank[1])


def test_stats_average_over_the_window_and_sum_counters():
    s = Stats("cpu")
    for v in (1.0, 3.0):
        s.add("loss_g", torch.tensor(v))
        s.add("n_nonfinite_g", torch.tensor(2))
    assert s.flush(reduce=False) == {"loss_g": 2.0, "n_nonfinite_g": 4.0}
    assert s.flush(reduce=False) == {}


def test_find_latest_ignores_temporary_and_incomplete_checkpoints(tmp_path):
    for name, complete in (("ckpt-000000002", True), ("ckpt-000000005", False), (".tmp-ckpt-000000007", True)):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "meta.json").write_text("{}")
    assert ckpt.find_latest(tmp_path).name == "ckpt-000000002"
    assert ckpt.find_latest(tmp_path / "missing") is None


def test_activation_checkpointing_config_reaches_the_networks():
    from fastui.train.config import load_config
    from fastui.train.models import build_networks

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.toml",
                      ['--model.activation_checkpointing=["fake", "generator"]'])
    teacher, gen, fake = build_networks(cfg, torch.device("cpu"), dry_run=True)
    assert gen.model.use_checkpoint and fake.fake.model.use_checkpoint and not teacher.model.use_checkpoint
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in gen.parameters()) and all(p.requires_grad for p in fake.parameters())


def test_max_minutes_stops_early_and_still_exports(tmp_path):
    """run.max_minutes ends a long run after the first iteration past the budget, with checkpoint and export."""
    import json
    import subprocess
    import sys

    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "fastui.train", "--config", "configs/toy_ring8.toml", f"--run.out_dir={out}",
           "--run.name=budget", "--run.duration_images=100000000", "--run.max_minutes=0.0001",
           "--model.pretrain_steps=1", "--run.progress=false", "--run.tensorboard=false"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}  # other tests' rendezvous
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=str(ROOT_DIR),
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = out / "budget"
    assert (run / "generator_ema" / "arch.json").exists()
    ckpts = sorted((run / "checkpoints").glob("ckpt-*"))
    assert len(ckpts) == 1, ckpts  # stopped after the first iteration: its final checkpoint only
    assert json.loads((run / "config.json").read_text())["config"]["run"]["max_minutes"] == 0.0001


def test_snapshots_export_the_ema_generator_at_each_multiple_of_the_interval(tmp_path):
    """run.snapshot_every_images: plain generator directories named by the images done; the last one is the export."""
    import subprocess
    import sys

    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "fastui.train", "--config", "configs/toy_ring8.toml", f"--run.out_dir={out}",
           "--run.name=snap", "--run.duration_images=192", "--batch.global_size=64", "--batch.micro=64",
           "--run.snapshot_every_images=128", "--model.pretrain_steps=1", "--run.progress=false",
           "--run.tensorboard=false"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    run = out / "snap"
    (run / "snapshots" / "000000256").mkdir(parents=True)  # left by an earlier run started over: removed
    (run / "grids").mkdir()
    (run / "grids" / "000000000256.png").write_bytes(b"")
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=str(ROOT_DIR),
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["000000128"]  # 64, 128, 192 images done
    assert not (run / "grids" / "000000000256.png").exists()
    snap = torch.load(run / "snapshots" / "000000128" / "weights.pt", weights_only=True)
    final = torch.load(run / "generator_ema" / "weights.pt", weights_only=True)
    assert snap.keys() == final.keys() and (run / "snapshots" / "000000128" / "arch.json").exists()
    assert any(not torch.equal(snap[k], final[k]) for k in snap)  # the EMA moved in the third iteration


def test_negative_max_minutes_is_a_config_error():
    from fastui.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="max_minutes"):
        resolve(load_config("configs/toy_ring8.toml", ["--run.max_minutes=-1"]), 1)
    with pytest.raises(ConfigError, match="snapshot_every_images"):
        resolve(load_config("configs/toy_ring8.toml", ["--run.snapshot_every_images=-1"]), 1)


@pytest.mark.parametrize("teacher_bf16", [True, False])
def test_bf16_autocast_keeps_the_frozen_teacher_in_bf16_with_the_same_outputs(teacher_bf16):
    """model.teacher_bf16 stores the teacher's weights in bf16 under bf16 autocast (torch backend): autocast would
    cast the same weights to bf16 in every forward anyway, so the denoiser output may differ only by fp32 rounding
    (far below bf16's resolution of 2^-8)."""
    from fastui import networks
    from fastui.train.engines import build_engines

    arch = networks.tiny_arch({"model": "SongUNet", "img_resolution": 16, "img_channels": 1, "label_dim": 0,
                               "sigma_data": 0.5, "precond": "edm", "kwargs": {}})
    torch.manual_seed(0)
    teacher = networks.build(arch).eval().requires_grad_(False)
    reference = networks.build(arch).eval().requires_grad_(False)
    reference.load_state_dict(teacher.state_dict())
    cfg = Config()
    cfg.engine.backend, cfg.engine.autocast_bf16, cfg.model.teacher_bf16 = "torch", True, teacher_bf16
    cfg.batch.global_size = cfg.batch.micro = 2
    res = resolve(cfg, 1)
    engine, _, _ = build_engines(cfg, res, teacher, networks.build(arch), networks.build(arch), torch.device("cpu"))
    dtypes = {p.dtype for p in engine.module.parameters()}
    assert dtypes == ({torch.bfloat16} if teacher_bf16 else {torch.float32})
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.3, 2.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = engine(x, sigma), reference(x, sigma)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_optim_impl_is_validated_and_apex_off_cuda_is_a_clear_error():
    from fastui.train.config import ConfigError, validate
    from fastui.train.engines import make_adam

    cfg = Config()
    cfg.optim.impl = "nope"
    with pytest.raises(ConfigError, match="optim.impl"):
        validate(cfg)
    cfg.optim.impl = "apex"
    with pytest.raises(RuntimeError, match="CUDA only"):
        make_adam([torch.nn.Parameter(torch.zeros(2))], cfg, 1e-3, 1e-8, torch.device("cpu"))


@pytest.mark.slow  # DeepSpeed JIT-builds its CPU Adam on first use (~40 s)
def test_deepspeed_cpu_adam_takes_the_same_step_as_torch_adam():
    pytest.importorskip("deepspeed")
    from fastui.train.engines import make_adam

    torch.manual_seed(0)
    start, grads = torch.randn(64), [torch.randn(64) for _ in range(3)]
    out = {}
    for impl in ("torch", "deepspeed"):
        cfg = Config()
        cfg.optim.impl = impl
        p = torch.nn.Parameter(start.clone())
        opt = make_adam([p], cfg, 1e-2, 1e-8, torch.device("cpu"))
        for g in grads:
            p.grad = g.clone()
            opt.step()
        out[impl] = p.detach()
    assert not torch.equal(out["torch"], start)
    torch.testing.assert_close(out["deepspeed"], out["torch"], rtol=1e-5, atol=1e-6)


def test_conv_head_depth_sets_patch_grid_and_receptive_field():
    """discriminator.depth: stride-2 convolutions of the conv head. Depth 2 keeps the original layout (checkpoints
    load); at 32x32, depth 4 gives a 2x2 grid whose last patch sees pixel (1, 1), which depth 2's last patch does
    not."""
    from fastui.train.config import ConfigError, load_config
    from fastui.train.models import PixelHead

    shape = (1, 32, 32)
    two, four = PixelHead(shape, 8), PixelHead(shape, 8, depth=4)
    assert {k: tuple(v.shape) for k, v in two.state_dict().items()} == {
        "net.0.weight": (8, 2, 3, 3), "net.0.bias": (8,), "net.2.weight": (8, 8, 3, 3), "net.2.bias": (8,),
        "net.4.weight": (1, 8, 1, 1), "net.4.bias": (1,)}
    x, sigma = torch.randn(2, *shape), torch.full((2,), 0.5)
    x2 = x.clone()
    x2[:, :, 1, 1] += 5.0
    with torch.no_grad():
        l2, l2b, l4, l4b = two(x, sigma), two(x2, sigma), four(x, sigma), four(x2, sigma)
    assert l2.shape == (2, 64) and l4.shape == (2, 4)
    assert torch.equal(l2[:, -1], l2b[:, -1]) and not torch.equal(l4[:, -1], l4b[:, -1])
    mlp = PixelHead((2,), 8, depth=3)
    assert sum(isinstance(m, torch.nn.Linear) for m in mlp.net) == 4
    assert mlp(torch.randn(5, 2), torch.ones(5)).shape == (5, 1)
    for bad in (0, 9):
        with pytest.raises(ConfigError, match="discriminator.depth"):
            resolve(load_config("configs/toy_ring8.toml", [f"--discriminator.depth={bad}"]), 1)


def test_discriminator_weight_scales_only_the_discriminator_term_of_the_fake_step():
    """discriminator.weight multiplies L_disc inside the fake-score step (DSM term unchanged); it must be > 0."""
    from fastui.train.config import ConfigError, validate
    from fastui.train.models import PixelHead
    from fastui.train.step import StepContext, fake_micro_step

    shape = (1, 8, 8)
    torch.manual_seed(0)
    head = PixelHead(shape, 8)
    real = torch.rand(4, *shape) * 2 - 1

    class Fake:  # the engine interface fake_micro_step uses: forward(mode="train"), backward, step
        def __call__(self, x, sigma, labels, mode, real, real_labels):
            both = head(torch.cat([x, real]), torch.cat([sigma, sigma]))
            return 0.9 * x, both[:4], both[4:]

        def backward(self, loss):
            self.loss = loss.detach()

        def step(self):
            pass

    seen = {}
    for weight in (1.0, 3.0):
        cfg = Config()
        cfg.batch.global_size = cfg.batch.micro = 4
        cfg.loss.ratio = "on"
        cfg.discriminator.weight = weight
        res = resolve(cfg, 1)
        fake = Fake()
        ctx = StepContext(cfg, res, None, SimpleNamespace(module=lambda x, s, c: 0.5 * x), fake, shape, 0,
                          torch.device("cpu"), 0, Stats(torch.device("cpu")), real=lambda d: (real, None))
        fake_micro_step(ctx, 3, 1, 0)
        st = ctx.stats.flush(reduce=False)
        seen[weight] = (fake.loss, st["loss_fake"], st["loss_disc"])
    (l1, dsm1, disc1), (l3, dsm3, disc3) = seen[1.0], seen[3.0]
    assert dsm1 == pytest.approx(dsm3) and disc1 == pytest.approx(disc3) and disc1 > 0
    assert float(l1) == pytest.approx(dsm1 + disc1, rel=1e-5)
    assert float(l3) == pytest.approx(dsm3 + 3.0 * disc3, rel=1e-5)
    cfg = Config()
    cfg.discriminator.weight = 0.0
    with pytest.raises(ConfigError, match="discriminator.weight"):
        validate(cfg)


def test_ema_update_is_the_lerp_of_every_parameter_in_fp32_and_leaves_the_module_alone():
    from fastui.train.ema import Ema

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2).to(torch.bfloat16))
    ema = Ema(net)
    start = [s.clone() for s in ema.shadow]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    before = [p.detach().clone() for p in net.parameters()]
    ema.update(0.9)
    ema.update(0.5)
    for s, s0, p in zip(ema.shadow, start, before):
        want = 0.5 * (0.9 * s0 + 0.1 * p.float()) + 0.5 * p.float()
        assert s.dtype == torch.float32
        torch.testing.assert_close(s, want, rtol=1e-6, atol=1e-6)
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p, b) and p.grad is None
    assert not any(s.requires_grad for s in ema.shadow)


def test_run_logger_keeps_only_rows_up_to_the_resumed_iteration(tmp_path):
    from fastui.train.logging import RunLogger

    path = tmp_path / "log.csv"
    path.write_text("iteration,images,loss_g\n" + "".join(f"{i},{32 * i},{i / 10}\n" for i in range(1, 6)))
    log = RunLogger(tmp_path, 10, 3, 32, active=True, tensorboard=False, progress=False)
    assert path.read_text().splitlines()[1:] == ["1,32,0.1", "2,64,0.2", "3,96,0.3"]
    log.log(4, 128, {"loss_g": 0.4})
    assert [line.split(",")[0] for line in path.read_text().splitlines()] == ["iteration", "1", "2", "3", "4"]
    RunLogger(tmp_path, 10, 0, 32, active=True, tensorboard=False, progress=False)  # started over: no stale rows
    assert not path.exists()


def test_run_logger_resume_drops_a_row_cut_short_and_keeps_rows_narrower_than_a_grown_header(tmp_path):
    """A kill in mid-append leaves a partial last row (no newline); rows from before a statistic joined the header
    have fewer fields and stay."""
    from fastui.train.logging import RunLogger

    path = tmp_path / "log.csv"
    path.write_text("iteration,images,loss_g,loss_gan\n1,32,0.1\n2,64,0.2,0.5\n3,96,0.3,0.4\n4,1")
    RunLogger(tmp_path, 10, 5, 32, active=True, tensorboard=False, progress=False)
    assert path.read_text() == "iteration,images,loss_g,loss_gan\n1,32,0.1\n2,64,0.2,0.5\n3,96,0.3,0.4\n"
    path.write_text("iteration,images,loss_g\n1,32,0.1\nx1,64,0.2\n")  # garbled first field
    RunLogger(tmp_path, 10, 5, 32, active=True, tensorboard=False, progress=False)
    assert path.read_text() == "iteration,images,loss_g\n1,32,0.1\n"


@pytest.mark.parametrize("step,per_it", [(16000, 128), (100, 32), (96, 32), (50, 7)])
def test_crossed_every_fires_once_per_multiple(step, per_it):
    from fastui.train.run import crossed_every
    fired = [it * per_it for it in range(1, 200) if crossed_every(step, it * per_it, per_it)]
    # exactly one iteration per multiple of `step` reached, the first whose image count is at or past it
    expected = [((k * step + per_it - 1) // per_it) * per_it for k in range(1, 199 * per_it // step + 1)]
    assert fired == expected
    assert not any(crossed_every(0, it * per_it, per_it) for it in range(1, 50))


class _BodyAndHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(3, 3)
        self.head = torch.nn.Linear(3, 1)


def _fake_engine(disc_lr: float, seed: int = 0):
    from fastui.train.engines import build_engines

    cfg = Config()
    cfg.engine.backend, cfg.optim.lr_fake, cfg.optim.fused = "torch", 1e-3, False
    cfg.discriminator.kind, cfg.discriminator.lr = "conv", disc_lr
    cfg.batch.global_size = cfg.batch.micro = 4
    torch.manual_seed(seed)
    _, _, fake = build_engines(cfg, resolve(cfg, 1), torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), _BodyAndHead(),
                               torch.device("cpu"))
    return fake


def _unit_step(eng):
    for p in eng.module.parameters():
        p.grad = torch.ones_like(p)
    eng.step()


def test_discriminator_lr_is_the_heads_own_adam_group():
    eng = _fake_engine(5e-3)
    assert [g["lr"] for g in eng.optimizer.param_groups] == [1e-3, 5e-3]
    before = {n: p.detach().clone() for n, p in eng.module.named_parameters()}
    _unit_step(eng)
    for n, p in eng.module.named_parameters():  # Adam's first step moves every entry by ~lr (beta1 = 0)
        want = 5e-3 if n.startswith("head.") else 1e-3
        assert torch.allclose(before[n] - p.detach(), torch.full_like(p, want), rtol=1e-3), n
    assert [g["lr"] for g in _fake_engine(0.0).optimizer.param_groups] == [1e-3]


def test_checkpoint_of_one_adam_group_resumes_into_a_separate_head_group_and_back(tmp_path):
    one = _fake_engine(0.0)
    _unit_step(one)
    one.save(tmp_path)
    two = _fake_engine(5e-3, seed=1)
    changed = two.load(tmp_path)
    assert changed == {"lr[group 1]": (1e-3, 5e-3)}
    assert [g["lr"] for g in two.optimizer.param_groups] == [1e-3, 5e-3]
    for (n, p), q in zip(one.module.named_parameters(), two.module.parameters()):
        assert torch.equal(p, q), n
        assert torch.equal(one.optimizer.state[p]["exp_avg_sq"], two.optimizer.state[q]["exp_avg_sq"]), n
    two.save(tmp_path / "two")
    back = _fake_engine(0.0, seed=2)
    assert back.load(tmp_path / "two") == {}
    assert len(back.optimizer.param_groups) == 1 and back.optimizer.param_groups[0]["lr"] == 1e-3
    assert all(torch.equal(p, q) for p, q in zip(two.module.parameters(), back.module.parameters()))


def test_discriminator_lr_needs_the_conv_head():
    from fastui.train.config import ConfigError, validate

    cfg = Config()
    cfg.discriminator.lr = 1e-4
    with pytest.raises(ConfigError, match="discriminator.lr needs"):
        validate(cfg)
    cfg.discriminator.lr = -1.0
    cfg.discriminator.kind = "conv"
    with pytest.raises(ConfigError, match="discriminator.lr must be >= 0"):
        validate(cfg)


def test_parameter_groups_must_cover_the_module_in_order_and_checkpoints_must_match_in_size(tmp_path):
    from fastui.train.engines import Engine, _regroup

    cfg = Config()
    cfg.engine.backend, cfg.optim.fused = "torch", False
    net = _BodyAndHead()
    body, head = list(net.body.parameters()), list(net.head.parameters())
    with pytest.raises(ValueError, match="in their order"):
        Engine(net, cfg, resolve(cfg, 1), 1e-3, "fake", torch.device("cpu"), groups=[(head, 1e-3), (body, 1e-3)])
    saved = {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1, 2]}]}
    with pytest.raises(ValueError, match="holds 3 parameters, this run's 4"):
        _regroup(saved, [{"params": body}, {"params": head}], "fake")
