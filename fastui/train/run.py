"""Build a run from a validated config and train: networks, engines, data, EMA, checkpoints, logs, export.

:func:`train` is what ``python -m fastui.train`` calls after the config has been checked (``__main__``); it is
collective (every rank calls it). The iteration itself is :func:`fastui.train.step.train_iteration`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .config import Config, ConfigError, Resolved, to_dict
from .ema import Ema
from .engines import build_engines, init_distributed
from .logging import RunLogger
from .models import build_network, build_networks, data_shape, save_network, teacher_is_analytic
from .refresh import refresh_head
from .schedule import ema_beta, lr_scale, phase
from .step import Draws, Stats, StepContext, train_iteration

__all__ = ["Setup", "refresh_due", "run_dir_of", "select_device", "setup", "train"]


def select_device(cfg: Config) -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (or asked for), else the CPU."""
    want = cfg.engine.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def run_dir_of(cfg: Config, config_path: str | None) -> Path:
    """``<run.out_dir>/<run.name>``; the default name is ``<config stem>-<method>[-<divergence>]``."""
    name = cfg.run.name
    if not name:
        stem = Path(config_path).stem if config_path else "run"
        div = cfg.loss.divergence
        name = f"{stem}-{cfg.loss.method}" + (f"-{div}" if div and div not in stem else "")
        name = stem if cfg.loss.method in stem else name
    return Path(cfg.run.out_dir) / name


def _fault(name: str, value: int) -> bool:
    """Fault injection for the kill-and-resume tests (``FASTUI_FAULT_<NAME>=<iteration>``)."""
    return os.environ.get(f"FASTUI_FAULT_{name}") == str(value)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _real_sources(cfg: Config, res: Resolved, teacher, shape, label_dim: int, device, rank: int, dry_run: bool):
    """``(real(draws) -> (images, labels), data_labels() -> labels, loader)`` for what the config needs."""
    need_real = res.needs_disc
    need_labels = cfg.batch.labels == "data" and label_dim > 0
    if not (need_real or need_labels):
        return None, None, None
    src = cfg.data.source
    analytic = teacher_is_analytic(cfg.teacher.spec)
    if dry_run:
        src = "" if analytic else "synthetic"
    if src == "" and analytic:
        def real(d: Draws):
            return d.take(teacher.sample(d.rows, generator=d.gen)).to(device), None

        return real, None, None
    if src == "synthetic":
        def real(d: Draws):
            return d.uniform(shape), d.labels(label_dim)

        return real, None, None  # labels for G: uniform draws (the synthetic stand-in of the data's labels)
    from ..data.loader import ShardLoader, normalize

    loader = ShardLoader(src, res.micro, seed=cfg.run.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                         num_workers=cfg.data.num_workers, rank=rank, world_size=res.world)
    if tuple(loader.image_shape) != tuple(shape):
        raise ConfigError(f"data.source {src!r} holds images of shape {tuple(loader.image_shape)} but the networks "
                          f"take {tuple(shape)}")
    state = {"it": None}

    def batch():
        if state["it"] is None:
            state["it"] = iter(loader)
        b = next(state["it"])
        return normalize(b["image"], device), (b["label"].to(device) if label_dim else None)

    def real(d: Draws):
        return batch()

    return real, (lambda: batch()[1]) if need_labels else None, loader


def _save_grid(cfg: Config, ema: Ema, gen_module, shape, label_dim, device, path: Path, rank: int) -> None:
    """Sample grid of the EMA generator on rank 0 (the EMA gather is collective)."""
    state = ema.full_state_dict()
    if rank != 0:
        return
    net = build_network(gen_module.arch).to(device).eval()
    net.load_state_dict(state)
    n = cfg.run.grid_size
    g = torch.Generator(device=device).manual_seed(cfg.run.seed + 12345)
    z = torch.randn((n, *shape), generator=g, device=device)
    labels = torch.arange(n, device=device) % label_dim if label_dim else None
    with torch.no_grad():
        x = net(cfg.model.sigma_init * z, torch.full((n,), cfg.model.sigma_init, device=device), labels).float()
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(shape) == 3:
        from ..eval.grid import save_grid

        save_grid(x.clamp(-1, 1).cpu(), str(path))
    else:  # vector data: a scatter of the first two coordinates
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4))
        pts = x.reshape(n, -1).cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1] if pts.shape[1] > 1 else pts[:, 0] * 0, s=3)
        ax.set_aspect("equal")
        fig.savefig(path, dpi=100)
        plt.close(fig)


def export_ema(run_dir: Path, ema: Ema, gen_module, rank: int, name: str = "generator_ema") -> Path:
    """Export the EMA generator as a plain fastui checkpoint directory (contract 2) for ``fastui sample``: the final
    one to ``run_dir/generator_ema``, a snapshot to ``run_dir/snapshots/<images>``."""
    state = ema.full_state_dict()
    out = run_dir / name
    if rank == 0:
        try:
            from ..teachers import save_checkpoint

            save_checkpoint(None, out, arch=gen_module.arch, state_dict=state)
        except ImportError:
            save_network(gen_module, state, out)
    return out


def _drop_outputs_after(run_dir: Path, images: int) -> None:
    """Remove the snapshots and grids named by more than ``images`` (the starting point): they come from a run killed
    after its last checkpoint, or from an earlier run started over, and would mix into this run's trajectory. The
    log's rows are dropped the same way (:class:`RunLogger`)."""
    stale = [p for p in (run_dir / "snapshots").glob("*") if p.name.isdigit() and int(p.name) > images]
    stale += [p for p in (run_dir / "grids").glob("*.png") if p.stem.isdigit() and int(p.stem) > images]
    for p in sorted(stale):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    if stale:
        print(f"fastui train: removed {len(stale)} snapshot(s)/grid(s) of more than {images:,} images in {run_dir} "
              "(written after the checkpoint this run starts from)", flush=True)


class Setup(SimpleNamespace):
    """What :func:`setup` builds: ``device, rank, world, teacher, gen, fake, ema, ctx, loader, shape, label_dim``."""


def setup(cfg: Config, res: Resolved, *, dry_run: bool = False) -> Setup:
    """Devices, process group, networks, engines, EMA, data sources and the step context (collective)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    device = select_device(cfg)
    if device.type == "cpu":  # oversubscribed OpenMP threads spin: one process per core is far faster
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        threads = cfg.engine.cpu_threads or int(os.environ.get("OMP_NUM_THREADS", "0")) \
            or max(1, (os.cpu_count() or 1) // local_world)
        torch.set_num_threads(threads)
    if cfg.loss.backend != "auto":
        os.environ["FASTUI_BACKEND"] = cfg.loss.backend
    init_distributed(cfg, device)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.run.seed)
    teacher, generator, fake = build_networks(cfg, device, dry_run=dry_run, needs_disc=res.needs_disc)
    shape, label_dim = data_shape(generator), int(getattr(generator, "label_dim", 0) or 0)
    if cfg.model.channels_last and len(shape) == 3:
        for net in (teacher, generator, fake):
            net.to(memory_format=torch.channels_last)
    if cfg.model.compile:
        mode = None if cfg.model.compile_mode == "default" else cfg.model.compile_mode
        for net in (teacher, generator, fake):
            net.compile(mode=mode)
        if rank == 0:
            print(f"fastui train: torch.compile (mode {cfg.model.compile_mode}) of the teacher, generator and fake "
                  "score; the first iterations compile", flush=True)
    teacher_eng, gen, fake_eng = build_engines(cfg, res, teacher, generator, fake, device)
    ema = Ema(gen.module)
    real, data_labels, loader = _real_sources(cfg, res, teacher, shape, label_dim, device, rank, dry_run)
    # bf16: forwards under autocast (the torch path keeps fp32 parameters; under DeepSpeed it also casts the
    # fp32 side inputs such as noise embeddings and labels to the bf16 weights)
    autocast = None
    if cfg.engine.autocast_bf16 or cfg.engine.precision == "bf16":
        autocast = torch.bfloat16
    elif cfg.engine.precision == "fp16":
        autocast = torch.float16
    stats = Stats(device)
    ctx = StepContext(cfg, res, teacher_eng, gen, fake_eng, shape, label_dim, device, rank, stats, real, data_labels,
                      autocast)
    return Setup(device=device, rank=rank, world=world, teacher=teacher_eng, gen=gen, fake=fake_eng, ema=ema,
                 ctx=ctx, loader=loader, shape=shape, label_dim=label_dim)


def _restore_data_position(cfg: Config, loader, state: dict, rank: int) -> None:
    """Continue the checkpoint's data-loader position, or start the stream over (``data.resume_position = false``:
    a run moved to other shards of the same images, say a subset on another machine)."""
    if not cfg.data.resume_position:
        if rank == 0:
            print("fastui train: data.resume_position = false: the data stream starts over (the checkpoint's "
                  "position is not restored)", flush=True)
        return
    try:
        loader.load_state_dict(state)
    except ValueError as e:
        raise ConfigError(f"{e} (data.source or the loader settings differ from the checkpoint's; "
                          "--data.resume_position=false starts the data stream over instead)") from None


def train(cfg: Config, res: Resolved, *, config_path: str | None = None, resume: str = "", dry_run: bool = False,
          dry_run_iterations: int = 2) -> dict:
    """Train (collective). Returns the last logged statistics (and ``run_dir``).

    Args:
        cfg, res: validated config and its resolved values (see :func:`fastui.train.config.resolve`).
        config_path: for the default run name.
        resume: ``""``, ``"auto"`` (newest complete checkpoint of the run directory, if any) or a checkpoint path.
        dry_run: tiny stand-in networks, synthetic data, ``dry_run_iterations`` iterations, nothing written.
    """
    s = setup(cfg, res, dry_run=dry_run)
    device, rank, world, gen, fake_eng, ema, ctx, loader = s.device, s.rank, s.world, s.gen, s.fake, s.ema, s.ctx, \
        s.loader
    shape, label_dim, stats = s.shape, s.label_dim, s.ctx.stats
    run_dir = None if dry_run else run_dir_of(cfg, config_path)
    memory = None

    total_it = dry_run_iterations if dry_run else -(-cfg.run.duration_images // res.global_size)
    warmup, ratio_start = (0, 0) if dry_run else (cfg.schedule.warmup_images, cfg.schedule.ratio_start_images)
    start_it = 0
    ckpt_dir = run_dir / "checkpoints" if run_dir is not None else None
    if resume and not dry_run:
        path = ckpt.find_latest(ckpt_dir) if resume == "auto" else Path(resume)
        if path is not None:
            # the saved rates are those of the checkpoint's last iteration
            meta, per_rank = ckpt.load(path, {"generator": gen, "fake": fake_eng}, lr_scale_of=lambda m: lr_scale(
                train_progress(cfg, (int(m["iteration"]) - 1) * res.global_size), cfg.optim.lr_decay_start,
                cfg.optim.lr_decay_final))
            ema.load_state_dict(per_rank["ema"])
            if loader is not None and per_rank.get("data") is not None:
                _restore_data_position(cfg, loader, per_rank["data"], rank)
            start_it = int(meta["iteration"])
            if rank == 0:
                print(f"fastui train: resumed from {path} (iteration {start_it})", flush=True)
        elif rank == 0:
            print(f"fastui train: no complete checkpoint in {ckpt_dir}; starting from scratch", flush=True)

    if rank == 0 and run_dir is not None and not dry_run:
        # written once the resume has gone through: a refused one leaves the run's config.json as it was
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {k: v for k, v in asdict(res).items() if k != "preset"} | {"preset": res.preset.name}
        (run_dir / "config.json").write_text(json.dumps({"config": to_dict(cfg), "resolved": resolved,
                                                         "world": world}, indent=1, default=str))
        _drop_outputs_after(run_dir, start_it * res.global_size)
    logger = RunLogger(run_dir, total_it, start_it, res.global_size, active=rank == 0,
                       tensorboard=cfg.run.tensorboard, progress=cfg.run.progress and not dry_run)
    last: dict = {}
    every = res.global_size

    def crossed(step_images: int, images_after: int) -> bool:
        return crossed_every(step_images, images_after, every)

    deadline = time.monotonic() + 60.0 * cfg.run.max_minutes if cfg.run.max_minutes > 0 and not dry_run else None
    for it in range(start_it, total_it):
        images = it * res.global_size
        ph = phase(images, warmup, ratio_start)
        decay_lr(cfg, (gen, fake_eng), train_progress(cfg, images))
        train_iteration(ctx, it, ph)
        if memory is None:  # after the first step, when the optimizers' state exists
            memory = _memory_report(gen, fake_eng, run_dir, rank, world)
        if ph.generator_step:
            ema.update(ema_beta(images + every, every, cfg.ema.halflife_images, cfg.ema.rampup))
        if _fault("KILL_AT_ITERATION", it + 1):  # "killed during iteration it + 1" (test hook)
            _kill_self()
        done_it, images_after = it + 1, (it + 1) * res.global_size
        if refresh_due(cfg, images_after, every):
            _refresh(ctx, it, images_after, rank)
        final = done_it == total_it or (deadline is not None and _past(deadline, world))
        if done_it % cfg.run.log_every == 0 or final:
            last = _log(logger, stats, gen, fake_eng, done_it, images_after, ph)
        if run_dir is None:
            continue
        if crossed(cfg.run.grid_every_images, images_after) or final:
            _save_grid(cfg, ema, gen.module, shape, label_dim, device, run_dir / "grids" / f"{images_after:012d}.png",
                       rank)
        if crossed(cfg.run.snapshot_every_images, images_after):
            export_ema(run_dir, ema, gen.module, rank, f"snapshots/{images_after:09d}")
        if crossed(cfg.run.ckpt_every_images, images_after) or final:
            meta = {"iteration": done_it, "images": images_after, "world": world,
                    "zero_stage": cfg.engine.zero_stage, "backend": cfg.engine.backend, "time": time.time()}
            per_rank = {"ema": ema.state_dict(), "data": loader.state_dict() if loader is not None else None}
            hook = _kill_self if _fault("KILL_IN_CHECKPOINT", done_it) else None
            ckpt.save(ckpt_dir, done_it, meta, {"generator": gen, "fake": fake_eng}, per_rank, cfg.run.keep_last,
                      fault_hook=hook)
        if final:
            break
    logger.close()
    if run_dir is not None:
        export_ema(run_dir, ema, gen.module, rank)
    return {**last, "run_dir": str(run_dir) if run_dir else None, "memory": memory}


def train_progress(cfg: Config, images: int) -> float:
    """The fraction of a ``fastui train`` run's budget done after ``images`` (``run.duration_images``)."""
    return images / max(cfg.run.duration_images, 1)


def decay_lr(cfg: Config, engines, progress: float) -> None:
    """``optim.lr_decay_start`` / ``lr_decay_final``: scale every engine's rates for ``progress`` (fraction of the
    budget done; the engine's is images / ``run.duration_images``, so a resumed run continues the same curve)."""
    if cfg.optim.lr_decay_final < 1.0:
        scale = lr_scale(progress, cfg.optim.lr_decay_start, cfg.optim.lr_decay_final)
        for eng in engines:
            eng.scale_lr(scale)


def crossed_every(step_images: int, images_after: int, images_per_iteration: int) -> bool:
    """Whether the iteration that ended at ``images_after`` crossed a multiple of ``step_images`` (0 = never)."""
    return step_images > 0 and images_after // step_images > (images_after - images_per_iteration) // step_images


def refresh_due(cfg: Config, images_after: int, images_per_iteration: int) -> bool:
    """Whether a fresh discriminator head is due after the iteration that ended at ``images_after``: it crossed a
    multiple of ``discriminator.refresh_every_images`` beyond ``discriminator.refresh_start_images``."""
    d = cfg.discriminator
    return images_after > d.refresh_start_images and crossed_every(d.refresh_every_images, images_after,
                                                                   images_per_iteration)


def _refresh(ctx: StepContext, it: int, images: int, rank: int) -> None:
    r = refresh_head(ctx, it)
    ctx.stats.add("disc_refresh", torch.ones((), device=ctx.device))  # log.csv: 1 in a window that holds a refresh
    if not math.isnan(r["loss_last"]):  # refresh_steps > 0
        ctx.stats.add("refresh_loss_disc", torch.tensor(r["loss_last"], device=ctx.device))
    if rank == 0:
        d = ctx.cfg.discriminator
        print(f"fastui train: fresh discriminator head at {images:,} images: {d.refresh_steps} Adam steps alone "
              f"(pools of {d.refresh_pool} real images and generator samples), L_disc {r['loss_first']:.4f} -> "
              f"{r['loss_last']:.4f} (chance 1.3863), {r['seconds']:.1f} s", flush=True)


def _past(deadline: float, world: int) -> bool:
    """Whether the wall-clock budget is spent; rank 0 decides for all (one tiny all-reduce: a host sync per
    iteration, only when ``run.max_minutes`` is set)."""
    flag = torch.tensor([1.0 if time.monotonic() >= deadline else 0.0])
    if world > 1 and dist.is_initialized():
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def _log(logger: RunLogger, stats: Stats, gen, fake_eng, iteration: int, images: int, ph) -> dict:
    values = stats.flush()
    for name, eng in (("g", gen), ("fake", fake_eng)):
        norm = eng.grad_norm()
        if norm is not None:
            values[f"grad_norm_{name}"] = float(norm)
        values[f"lr_{name}"] = eng.lr
        values[f"n_nonfinite_grad_{name}"] = float(eng.guard.count)
    lrs = fake_eng.lrs
    if len(lrs) > 1:  # discriminator.lr: the conv head's own Adam group (the last)
        values["lr_disc"] = lrs[-1]
    values["generator_on"] = float(ph.generator_step)
    values["ratio_on"] = float(ph.ratio_on)
    return logger.log(iteration, images, values)


def _memory_report(gen, fake_eng, run_dir, rank: int, world: int) -> list:
    """Per-rank bytes of parameters and optimizer state of the two trained networks (``memory.json``)."""
    mine = {"rank": rank}
    for name, eng in (("generator", gen), ("fake", fake_eng)):
        p, o = eng.state_bytes()
        mine[f"{name}_param_bytes"], mine[f"{name}_optim_bytes"] = p, o
    rows = [None] * world
    dist.all_gather_object(rows, mine)
    if run_dir is not None and rank == 0:
        (run_dir / "memory.json").write_text(json.dumps(rows, indent=1))
    return rows
