"""The README's first command (``make demo`` / ``fastui demo``): distil the shipped Fashion-MNIST teacher into a
one-step generator on the CPU, then compare teacher, initial and distilled generator.

What it does (everything lands in ``--out``, default ``runs/demo``):

1. distils ``--teacher`` (default ``demo``, :func:`fastui.teachers.load_teacher`) with the engine of
   :mod:`fastui.train` and the settings of ``configs/demo_fmnist.toml`` for ``--minutes`` of wall-clock time
   (the demo runs the engine's iteration itself, so it can stop on time); the EMA generator is exported to
   ``distill/generator_ema/`` (a fastui checkpoint directory);
2. samples the same ``--n`` seeds and class labels with the teacher (EDM's Heun sampler, 18 noise levels =
   35 network evaluations), the initial generator (the teacher's weights, one step) and the distilled generator
   (one step), and writes ``grid.png`` (:func:`fastui.eval.grid.side_by_side`, same seeds and labels per column);
3. computes the FID of each against the Fashion-MNIST test-set reference statistics and writes ``results.md`` and
   ``results.csv`` (FID, sampling wall time, images/s), printed at the end.

Usage::

    python -m fastui.demo [--out runs/demo] [--minutes 12|15] [--n 300] [--method uni] [--divergence fkl]
                          [--teacher demo] [--ref STATS.npz] [--skip-fid] [--set section.key=value ...]
    python -m fastui.demo --fid-of teacher initial runs/demo/distill/generator_ema [--n 300]   # FID only
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

from .cpu import native_bf16, pick_threads

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo_fmnist.toml"
DEFAULT_REF = Path(__file__).resolve().parent / "assets" / "fmnist_test_pad32_stats.npz"
HEUN_STEPS = 18  # EDM's CIFAR-10 sampler: 18 noise levels, 2 * 18 - 1 = 35 network evaluations
SAMPLE_SEED = 2026  # seed of the evaluation noise (independent of the training seed)
MINUTES = 12.0  # the distillation's default wall-clock budget
# on a CPU without native bf16 an fp32 iteration takes twice as long: the whole 15 minutes go to distilling
MINUTES_FP32 = 15.0


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastui demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="distillation config (TOML of fastui.train)")
    p.add_argument("--teacher", default=None, help="teacher spec (default: the config's, i.e. 'demo')")
    p.add_argument("--minutes", type=float, default=None,
                   help=f"wall-clock budget of the distillation (default {MINUTES}; {MINUTES_FP32} on a CPU without "
                        "native bf16, which distils in fp32)")
    p.add_argument("--cpu-seconds", type=float, default=None,
                   help="stop the distillation after this much process CPU time instead (fair comparisons on a "
                        "shared machine)")
    p.add_argument("--iterations", type=int, default=None, help="stop after this many iterations (smoke runs)")
    p.add_argument("--method", default=None, help="distillation preset (uni, sid, dmd, fdistill, ...)")
    p.add_argument("--divergence", default=None, help="divergence of uni / fdistill (fkl, jeffreys, rkl, ...)")
    p.add_argument("--n", type=int, default=300, help="samples per model for FID (default 300)")
    p.add_argument("--ref", default=str(DEFAULT_REF), help="FID reference statistics (.npz with mu, sigma)")
    p.add_argument("--skip-fid", action="store_true", help="no FID (fast smoke run): grid and timings only")
    p.add_argument("--grid-n", type=int, default=50, help="samples per grid panel (default 50: 5 per class)")
    p.add_argument("--data", default=None,
                   help="shard directory of real images for the GAN/ratio branches (default: made in OUT/shards "
                        "from the Debian package dataset-fashion-mnist when the method needs it), or 'synthetic'")
    p.add_argument("--snapshot-every", type=int, default=None,
                   help="export the EMA generator every this many generated images to OUT/distill/snapshots/ "
                        "(default: the config's run.snapshot_every_images; 0 = never)")
    p.add_argument("--batch", type=int, default=100, help="sampling batch size")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra fastui.train config override (repeatable)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = OMP_NUM_THREADS, else the cores left idle by other processes)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars (one line per stage)")
    p.add_argument("--fid-of", nargs="+", metavar="MODEL", default=None,
                   help="no training: FID (--n, the demo's evaluation draws, --ref) of each MODEL: a one-step "
                        "generator checkpoint directory (e.g. OUT/distill/generator_ema or a snapshot), 'teacher' "
                        "(Heun, 18 steps) or 'initial' (the teacher's weights in one step)")
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace, out: Path) -> list[str]:
    ov = [f"--run.out_dir={out}", "--run.name=distill", f"--run.seed={args.seed}", "--run.tensorboard=false",
          "--run.progress=false", "--run.grid_every_images=0", "--run.ckpt_every_images=0"]
    if args.teacher:
        ov.append(f"--teacher.spec={args.teacher}")
    if args.method:
        ov.append(f"--loss.method={args.method}")
        # the config's divergence belongs to its own method; presets without one must not inherit it
        ov.append(f"--loss.divergence={args.divergence or ''}")
    elif args.divergence:
        ov.append(f"--loss.divergence={args.divergence}")
    if args.snapshot_every is not None:
        ov.append(f"--run.snapshot_every_images={args.snapshot_every}")
    ov += [s if s.startswith("--") else f"--{s}" for s in args.set]
    return ov


def _ensure_data(cfg, args: argparse.Namespace, out: Path, needs_real: bool) -> None:
    """Point ``data.source`` at real images when the method's GAN/ratio branches need them."""
    if args.data:
        cfg.data.source = args.data
    if not needs_real or cfg.data.source == "synthetic" or (cfg.data.source and Path(cfg.data.source).exists()):
        return
    shards = out / "shards"
    if not (shards / "manifest.json").is_file():
        from .data import cli as data_cli

        print(f"demo: writing 20,000 Fashion-MNIST training images as shards to {shards} (~10 s)", flush=True)
        rc = data_cli.main(["fashion-mnist", "--out", str(shards), "--pad-to", "32", "--limit", "20000",
                            "--workers", "0", "--overwrite", *(["--no-progress"] if args.no_progress else [])])
        if rc != 0:
            raise SystemExit(f"demo: could not write Fashion-MNIST shards (exit {rc}); install the Debian package "
                             "dataset-fashion-mnist (make env does) or pass --data DIR")
    cfg.data.source = str(shards)


def distill(cfg, res, *, minutes: float | None, cpu_seconds: float | None = None, iterations: int | None = None,
            progress: bool = True, snapshot_every_images: int = 0) -> dict:
    """Run the engine's iterations until a budget is spent; export the EMA generator.

    Args:
        cfg, res: a validated :class:`fastui.train.config.Config` and its :func:`~fastui.train.config.resolve`.
        minutes: wall-clock budget (None = none); cpu_seconds: process CPU-time budget (None = none);
        iterations: iteration cap (None = ``run.duration_images / batch.global_size``).
        progress: tqdm bar over the budget.
        snapshot_every_images: also export the EMA generator to ``snapshots/<images>/`` this often (0 = never;
            the trajectory of a long run).

    Returns:
        ``{"generator_dir", "iterations", "images", "wall_s", "cpu_s", "last": {logged statistics}}``.
    """
    from .train.run import crossed_every, decay_lr, export_ema, run_dir_of, setup
    from .train.schedule import ema_beta, phase
    from .train.step import train_iteration

    s = setup(cfg, res)
    run_dir = run_dir_of(cfg, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    max_it = iterations if iterations is not None else -(-cfg.run.duration_images // res.global_size)
    wall_budget = minutes * 60 if minutes is not None else float("inf")
    cpu_budget = cpu_seconds if cpu_seconds is not None else float("inf")
    t0, c0 = time.perf_counter(), time.process_time()
    bar = None
    if progress:
        from tqdm import tqdm

        total = cpu_budget if cpu_seconds is not None else (wall_budget if minutes is not None else max_it)
        unit = "cpu-s" if cpu_seconds is not None else ("s" if minutes is not None else "it")
        bar = tqdm(total=round(total), unit=unit, desc="distil", dynamic_ncols=True)
    every = res.global_size
    last, it, writer = {}, 0, None
    # the log is written as it goes, so a long run can be watched
    with open(run_dir / "log.csv", "w", newline="") as log_file:
        while it < max_it:
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            # no iteration that would end past the budget, by the mean iteration so far: "at most M minutes" holds
            if wall + (wall / it if it else 0.0) > wall_budget or cpu + (cpu / it if it else 0.0) > cpu_budget:
                break
            images = it * every
            ph = phase(images, cfg.schedule.warmup_images, cfg.schedule.ratio_start_images)
            # the learning-rate decay follows the demo's own budget: the furthest of wall time, CPU time, iterations
            decay_lr(cfg, (s.gen, s.fake), max(wall / wall_budget, cpu / cpu_budget, it / max_it))
            train_iteration(s.ctx, it, ph)
            if ph.generator_step:
                s.ema.update(ema_beta(images + every, every, cfg.ema.halflife_images, cfg.ema.rampup))
            it += 1
            if it % cfg.run.log_every == 0:
                last = {k: round(v, 6) for k, v in s.ctx.stats.flush().items()}
                for name, eng in (("g", s.gen), ("fake", s.fake)):
                    norm = eng.grad_norm()
                    if norm is not None:
                        last[f"grad_norm_{name}"] = round(float(norm), 4)
                    last[f"lr_{name}"] = eng.lr
                row = {"iteration": it, "images": it * every, "wall_s": round(time.perf_counter() - t0, 2),
                       "cpu_s": round(time.process_time() - c0, 2), **last}
                if writer is None:
                    writer = csv.DictWriter(log_file, fieldnames=list(row), extrasaction="ignore")
                    writer.writeheader()
                writer.writerow(row)
                log_file.flush()
            if crossed_every(snapshot_every_images, it * every, every):
                export_ema(run_dir, s.ema, s.gen.module, s.rank, f"snapshots/{it * every:09d}")
            if bar is not None:
                done = {"cpu-s": time.process_time() - c0, "s": time.perf_counter() - t0}.get(bar.unit, it)
                bar.n = min(round(done), bar.total)
                bar.set_postfix(it=it, loss_g=f"{last.get('loss_g', float('nan')):.3g}", refresh=False)
                bar.refresh()
    if bar is not None:
        bar.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gen_dir = export_ema(run_dir, s.ema, s.gen.module, s.rank)
    return {"generator_dir": str(gen_dir), "iterations": it, "images": it * every, "wall_s": wall, "cpu_s": cpu,
            "last": last}


def evaluation_draws(n: int, shape: tuple, label_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fixed evaluation noise and class-balanced labels (``i % label_dim``) shared by every model.

    Shapes: returns z ``[n, *shape]`` and labels ``[n]`` int64 (None for unconditional networks).
    """
    g = torch.Generator().manual_seed(SAMPLE_SEED)
    z = torch.randn((n, *shape), generator=g)
    labels = torch.arange(n) % label_dim if label_dim else None
    return z, labels


@torch.no_grad()
def sample_all(fn, z: torch.Tensor, labels, batch: int, desc: str, progress: bool) -> tuple[torch.Tensor, float]:
    """``fn(z_batch, labels_batch)`` over ``z`` in batches; returns (images [n, ...] clamped to [-1, 1], wall s)."""
    starts = range(0, z.shape[0], batch)
    if progress and len(starts) > 1:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    out = [fn(z[i:i + batch], None if labels is None else labels[i:i + batch]) for i in starts]
    return torch.cat(out).clamp(-1, 1), time.perf_counter() - t0


def _table(rows: list[dict], n: int | None, ref: str | None) -> str:
    fid_head = f"FID (n = {n})" if n else "FID"
    lines = [f"| model | sampler | NFE | {fid_head} | sampling wall time (s) | images/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fid = "skipped" if r["fid"] is None else f"{r['fid']:.2f}"
        lines.append(f"| {r['model']} | {r['sampler']} | {r['nfe']} | {fid} | {r['wall_s']:.1f} | "
                     f"{r['images_per_s']:.1f} |")
    if ref:
        lines.append("")
        lines.append(f"FID reference: {ref} (Fashion-MNIST test set, zero-padded to 32x32); same {n} seeds and "
                     "class labels for every model. Small-n FID is biased upwards: compare only at equal n.")
    return "\n".join(lines)


def samplers(teacher, sigma_init: float):
    """``(teacher_fn, one_step_fn(net))``: the demo's two samplers as ``fn(z_batch, labels_batch) -> images``."""
    from .sample import heun_sample, one_step

    def teacher_fn(zb, lb):
        return heun_sample(teacher, zb, lb, num_steps=HEUN_STEPS)

    def one_step_fn(net):
        return lambda zb, lb: one_step(net, zb, lb, sigma_init)

    return teacher_fn, one_step_fn


def fid_of(models: list[str], *, teacher_spec: str, n: int, ref: Path, sigma_init: float = 2.5, batch: int = 100,
           progress: bool = True) -> list[tuple[str, float]]:
    """FID of each model with the demo's evaluation draws (:func:`evaluation_draws`) against ``ref``.

    Args:
        models: one-step generator checkpoint directories, ``"teacher"`` (Heun, 18 steps) or ``"initial"``.
        teacher_spec: the teacher for ``"teacher"`` / ``"initial"`` (and the image shape).

    Returns:
        ``[(model, fid), ...]`` in order.
    """
    from .eval.fid import InceptionFeatures, frechet_distance, load_stats, stats
    from .teachers import load_checkpoint, load_teacher

    teacher = load_teacher(teacher_spec).eval().requires_grad_(False)
    shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    z, labels = evaluation_draws(n, shape, int(teacher.label_dim or 0))
    ref_stats, net, out = load_stats(ref), InceptionFeatures("cpu"), []
    teacher_fn, one_step_fn = samplers(teacher, sigma_init)
    for m in models:
        if m == "teacher":
            fn = teacher_fn
        else:
            fn = one_step_fn(teacher if m == "initial" else load_checkpoint(m).eval())
        images, _ = sample_all(fn, z, labels, batch, f"sample {Path(m).name}", progress)
        fid = frechet_distance(*stats(net.features_from_float(images, progress=progress)), ref_stats["mu"],
                               ref_stats["sigma"])
        print(f"{m}: FID {fid:.2f} (n = {n})", flush=True)
        out.append((m, fid))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the demo (see the module docstring); returns 0 on success, 2 on a bad input."""
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    if args.fid_of:
        missing = [m for m in args.fid_of if m not in ("teacher", "initial") and not Path(m).is_dir()]
        if missing or not Path(args.ref).is_file():
            print(f"fastui demo: --fid-of: not found: {', '.join(missing) or args.ref}", file=sys.stderr)
            return 2
        torch.set_num_threads(pick_threads(args.threads))
        fid_of(args.fid_of, teacher_spec=args.teacher or "demo", n=args.n, ref=Path(args.ref), batch=args.batch,
               progress=not args.no_progress)
        return 0
    from .train.config import ConfigError, load_config, resolve

    out = Path(args.out)
    progress = not args.no_progress
    ref = None if args.skip_fid else Path(args.ref)
    if ref is not None and not ref.is_file():
        print(f"fastui demo: FID reference statistics {ref} are missing. Compute them once with\n"
              f"    fastui eval --ref fmnist-test --ref-n 2000 --out {ref}\n"
              "(a seeded subset of 2,000 Fashion-MNIST test images, padded to 32x32, as shipped; "
              "drop --ref-n for all 10,000), pass --ref PATH, or run with --skip-fid.", file=sys.stderr)
        return 2
    if not Path(args.config).is_file():
        print(f"fastui demo: config {args.config} not found (run from the repository, or pass --config)",
              file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, _overrides(args, out))
        res = resolve(cfg, 1)
    except ConfigError as e:
        print(f"fastui demo: {e}", file=sys.stderr)
        return 2
    try:
        from .teachers import load_teacher

        teacher = load_teacher(cfg.teacher.spec)
    except Exception as e:  # noqa: BLE001 - any loading problem is one line for the user
        print(f"fastui demo: cannot load teacher {cfg.teacher.spec!r}: {e}", file=sys.stderr)
        return 2
    threads = pick_threads(args.threads)
    from .train.run import select_device

    fp32_cpu = cfg.engine.autocast_bf16 and select_device(cfg).type == "cpu" and not native_bf16()
    if fp32_cpu:
        cfg.engine.autocast_bf16 = False
        print("fastui demo: this CPU has no native bf16 (AMX / AVX512-BF16): distilling in fp32, where an iteration "
              "takes about twice as long"
              + (f", for {MINUTES_FP32:g} minutes instead of {MINUTES:g}" if args.minutes is None else "")
              + " (README 'The demo on this machine')", flush=True)
    if args.minutes is None:
        args.minutes = MINUTES_FP32 if fp32_cpu else MINUTES
    torch.set_num_threads(threads)
    cfg.engine.cpu_threads = threads
    out.mkdir(parents=True, exist_ok=True)
    _ensure_data(cfg, args, out, res.needs_disc)
    teacher = teacher.eval().requires_grad_(False)
    shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    label_dim = int(teacher.label_dim or 0)
    n_params = sum(p.numel() for p in teacher.parameters())
    div = f" ({res.divergence})" if res.divergence and res.preset.form in ("uni", "fdistill") else ""
    budget = (f"{args.cpu_seconds:g} CPU-s" if args.cpu_seconds is not None else f"{args.minutes:g} min") + \
        (f", at most {args.iterations} iterations" if args.iterations is not None else "")
    print(f"fastui demo: teacher {cfg.teacher.spec} ({n_params / 1e6:.2f}M parameters), method {res.preset.name}"
          f"{div}, batch {res.global_size}, budget {budget}, {torch.get_num_threads()} CPU threads -> {out}",
          flush=True)

    run = distill(cfg, res, minutes=None if args.cpu_seconds is not None else args.minutes,
                  cpu_seconds=args.cpu_seconds, iterations=args.iterations, progress=progress,
                  snapshot_every_images=cfg.run.snapshot_every_images)
    print(f"distilled: {run['iterations']} iterations, {run['images']} generated images in {run['wall_s']:.0f} s "
          f"({run['cpu_s']:.0f} CPU-s, {run['images'] / max(run['wall_s'], 1e-9):.1f} images/s); generator -> "
          f"{run['generator_dir']}",
          flush=True)

    from .teachers import load_checkpoint

    student = load_checkpoint(run["generator_dir"]).eval()
    n = max(args.n, args.grid_n) if not args.skip_fid else args.grid_n
    z, labels = evaluation_draws(n, shape, label_dim)
    s0 = cfg.model.sigma_init
    teacher_fn, one_step_fn = samplers(teacher, s0)
    models = [
        ("teacher", f"Heun, {HEUN_STEPS} steps", 2 * HEUN_STEPS - 1, teacher_fn),
        ("initial generator (teacher weights)", "one step", 1, one_step_fn(teacher)),
        (f"distilled generator ({res.preset.name}{div.replace(' (', ', ').rstrip(')')})", "one step", 1,
         one_step_fn(student)),
    ]
    net = None
    if ref is not None:
        from .eval.fid import InceptionFeatures, frechet_distance, load_stats, stats

        ref_stats = load_stats(ref)
        net = InceptionFeatures("cpu")
    rows, panels = [], {}
    for name, sampler, nfe, fn in models:
        images, wall = sample_all(fn, z, labels, args.batch, f"sample {name.split(' (')[0]}", progress)
        panels[f"{name.split(' (')[0]} ({nfe} NFE)"] = images[: args.grid_n]
        fid = None
        if net is not None:
            feats = net.features_from_float(images[: args.n], progress=progress)
            fid = frechet_distance(*stats(feats), ref_stats["mu"], ref_stats["sigma"])
        rows.append({"model": name, "sampler": sampler, "nfe": nfe, "fid": fid, "n": args.n if fid is not None else 0,
                     "wall_s": wall, "images_per_s": images.shape[0] / max(wall, 1e-9)})
        print(f"  {name}: {sampler}, {nfe} NFE, {images.shape[0]} images in {wall:.1f} s"
              + (f", FID {fid:.2f} (n = {args.n})" if fid is not None else ""), flush=True)

    from .eval.grid import side_by_side

    grid = side_by_side(panels, out / "grid.png", nrow=label_dim or None, scale=2)
    table = _table(rows, None if ref is None else args.n, None if ref is None else str(ref))
    header = (f"Distillation: {res.preset.name}{div}, teacher {cfg.teacher.spec}, {run['iterations']} iterations x "
              f"batch {res.global_size} = {run['images']} generated images, {run['wall_s']:.0f} s wall "
              f"({run['cpu_s']:.0f} CPU-s, {run['images'] / max(run['wall_s'], 1e-9):.1f} images/s).")
    (out / "results.md").write_text(header + "\n\n" + table + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "sampler", "nfe", "fid", "n", "wall_s", "images_per_s"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "fid": "" if r["fid"] is None else f"{r['fid']:.4f}", "wall_s": f"{r['wall_s']:.2f}",
                        "images_per_s": f"{r['images_per_s']:.2f}"})
    (out / "distill.json").write_text(json.dumps({k: v for k, v in run.items()}, indent=1))
    print("\n" + header + "\n\n" + table + f"\n\ngrid: {grid}\ntables: {out / 'results.md'}, {out / 'results.csv'}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
