"""Operations and wall time of one distillation iteration (:func:`fastui.train.step.train_iteration`) of a config,
with the gradient guard as the torch backend runs it (``step``: one pass per optimizer step over a concatenated
copy) against the per-parameter tensor hooks it replaced (``hooks``, what DeepSpeed still uses).

``python -m bench.iteration --config configs/demo_fmnist_gpu.toml [--set section.key=value ...] [--iterations 30]
[--guard both|step|hooks] [--warmup 2] [--out bench/results/iteration.csv]``

With ``--guard step`` it times one form only, to compare another setting (run it once per setting, e.g. with and
without ``--set model.compile=true --warmup 4``; compiled runs leave ``ops_per_iteration`` empty: under the counting
dispatch mode the compiled frames run eagerly, so the count would be the eager one).

On a GPU an iteration of the small demo network is bound by the host: every dispatched operation costs Python,
dispatcher and launch time whatever its size, so the count of operations (:class:`torch.utils._python_dispatch.
TorchDispatchMode`, one iteration per mode, counted apart from the timing) predicts the speed. The two modes are
timed in alternating blocks (``A B A B ...``) with a device synchronisation after each iteration; each CSV row carries
the provenance of :mod:`bench.common`, the mode, operations per iteration, p20/p50/p80 of the iteration time, and
the FLOPs of one iteration (:class:`torch.utils.flop_counter.FlopCounterMode`: convolutions, matrix products and
attention, forward and backward) with the rate they make at p50, to hold against the device's peak.
Data: ``synthetic`` (the GAN branch needs real images; their values do not change the cost) unless ``--set
data.source=...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import append_csv, percentile, provenance, synchronize

FIELDS = ["date", "git_sha", "device", "torch", "cuda", "triton", "python", "host", "config", "overrides", "batch",
          "guard", "ops_per_iteration", "p20_ms", "p50_ms", "p80_ms", "iterations_per_s", "images_per_s",
          "gflop_per_iteration", "gflop_per_s"]


class _Count(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _use(engines, mode: str, device) -> None:
    """Give every engine a guard of ``mode`` (``step`` or ``hooks``), dropping the hooks of the other."""
    from fastui.train.engines import _GradGuard

    for eng in engines:
        for h in eng.guard.handles:
            h.remove()
        eng.guard = _GradGuard(eng.module.parameters(), device, eng.guard.clip, hooks=mode == "hooks")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.iteration", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo_fmnist_gpu.toml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--iterations", type=int, default=30, help="timed iterations per mode (default 30)")
    p.add_argument("--block", type=int, default=5, help="iterations per alternating block (default 5)")
    p.add_argument("--guard", choices=("both", "step", "hooks"), default="both",
                   help="gradient-guard forms to time (default both; one form for comparing other settings, e.g. "
                        "--set model.compile=true)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed iterations per form first (default 2; compiled networks need more)")
    p.add_argument("--out", default="", help="append the rows to this CSV")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.block < 1 or args.warmup < 0:
        p.error("--iterations and --block must be >= 1, --warmup >= 0")
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", "29561")):
        os.environ.setdefault(k, v)
    from fastui.train.config import load_config, resolve
    from fastui.train.run import setup
    from fastui.train.schedule import phase
    from fastui.train.step import train_iteration

    overrides = [f"--{s}" for s in args.set]
    if not any(s.startswith("data.source=") for s in args.set):
        overrides.append("--data.source=synthetic")
    cfg = load_config(args.config, overrides)
    if cfg.engine.backend != "torch":
        p.error(f"{args.config}: engine.backend is {cfg.engine.backend!r}; the guard forms compared here are the torch "
                "backend's (DeepSpeed always uses the hooks): add --set engine.backend=torch")
    res = resolve(cfg, 1)
    s = setup(cfg, res)
    ph = phase(10**9, 0, 0)  # past warm-up: generator step, GAN and ratio branches on
    engines = (s.gen, s.fake)
    it = 0

    def one() -> float:
        nonlocal it
        t0 = time.perf_counter()
        train_iteration(s.ctx, it, ph)
        synchronize(s.device)
        it += 1
        return (time.perf_counter() - t0) * 1e3

    modes = ("hooks", "step") if args.guard == "both" else (args.guard,)
    ops, flops, times = {}, {}, {m: [] for m in modes}
    for mode in modes:
        _use(engines, mode, s.device)
        t0 = time.perf_counter()
        for _ in range(args.warmup):  # allocator, cuDNN algorithm choice, torch.compile
            one()
        print(f"{mode:5s}: {args.warmup} warm-up iterations in {time.perf_counter() - t0:.1f} s", flush=True)
        with _Count() as c, FlopCounterMode(display=False) as fc:
            train_iteration(s.ctx, it, ph)
        it += 1
        # compiled frames run eagerly under a dispatch mode: the count would be the eager one (the FLOPs are the same)
        ops[mode] = "" if cfg.model.compile else c.n
        flops[mode] = fc.get_total_flops()
    done = 0
    while done < args.iterations:
        n = min(args.block, args.iterations - done)
        for mode in modes:
            _use(engines, mode, s.device)
            times[mode] += [one() for _ in range(n)]
        done += n
    prov = provenance(s.device)
    rows = []
    for mode in modes:
        p50 = percentile(times[mode], 50)
        rows.append({**prov, "config": args.config, "overrides": " ".join(args.set), "batch": res.global_size,
                     "guard": mode, "ops_per_iteration": ops[mode], "p20_ms": f"{percentile(times[mode], 20):.1f}",
                     "p50_ms": f"{p50:.1f}", "p80_ms": f"{percentile(times[mode], 80):.1f}",
                     "iterations_per_s": f"{1e3 / p50:.2f}", "images_per_s": f"{res.global_size * 1e3 / p50:.0f}",
                     "gflop_per_iteration": f"{flops[mode] / 1e9:.2f}",
                     "gflop_per_s": f"{flops[mode] / p50 / 1e6:.1f}"})
        print(f"{mode:5s}: {ops[mode] or 'n/a (compiled)'} ops/iteration, p50 {p50:.1f} ms ({1e3 / p50:.2f} it/s, "
              f"{res.global_size * 1e3 / p50:.0f} images/s; {flops[mode] / 1e9:.1f} GFLOP/iteration = "
              f"{flops[mode] / p50 / 1e6:.1f} GFLOP/s) on {prov['device']}", flush=True)
    if args.out:
        append_csv(args.out, [{k: r[k] for k in FIELDS} for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
