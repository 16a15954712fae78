"""Microbenchmark of the fused score-distillation loss: forward + backward of the generator loss (MATH §5).

Providers: ``eager`` (the pure-torch reference, autograd), ``compile`` (``torch.compile`` of the reference), and the
fused backends that can run here: ``torch`` (closed form, eager), ``cpp``, ``triton``, ``cuda``. Each row: time p20/p50/
p80 of one forward+backward, effective GB/s counting the minimal bytes (three inputs read, three gradients written),
that figure as a fraction of the copy bandwidth measured in the same run, extra peak memory (GPU only), provenance.

Usage:
    python -m bench.kernels --quick                     # CPU: two shapes, fp32 (< 3 minutes)
    python -m bench.kernels --device cuda --out OUT.csv --plot OUT.png
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import REPO, append_csv, copy_bandwidth_gbs, provenance, synchronize, time_ms

DEFAULT_OUT = REPO / "bench" / "results" / "kernels.csv"
FUSED = ("torch", "cpp", "triton", "cuda")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (label, batch, (C, H, W))
GPU_SHAPES = [("cifar", b, (3, 32, 32)) for b in (64, 128, 256)] + \
             [("imagenet64", b, (3, 64, 64)) for b in (8, 16, 32, 64)] + [("latent", 16, (4, 64, 64))]
CPU_SHAPES = [("cifar", 64, (3, 32, 32)), ("cifar", 256, (3, 32, 32)), ("imagenet64", 8, (3, 64, 64)),
              ("imagenet64", 32, (3, 64, 64)), ("latent", 16, (4, 64, 64))]
QUICK_CPU_SHAPES = [("cifar", 64, (3, 32, 32)), ("imagenet64", 32, (3, 64, 64))]
QUICK_GPU_SHAPES = [("cifar", 256, (3, 32, 32)), ("imagenet64", 8, (3, 64, 64)), ("imagenet64", 64, (3, 64, 64)),
                    ("latent", 16, (4, 64, 64))]


def make_inputs(batch: int, chw: tuple[int, ...], dtype: torch.dtype, device: str, seed: int = 0):
    """Generator output and two denoiser outputs (leaves requiring grad), sigma and log-ratio."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *chw, generator=g)
    dt = 0.5 * x + 0.3 * torch.randn(batch, *chw, generator=g)
    df = dt + 0.1 * torch.randn(batch, *chw, generator=g)
    sigma = (0.8 + torch.rand(batch, generator=g)).to(device)
    log_ratio = (0.5 * torch.randn(batch, generator=g)).to(device)
    leaves = [t.to(device=device, dtype=dtype).requires_grad_(True) for t in (x, dt, df)]
    return leaves, sigma, log_ratio


def provider_fns(device: str, dtype: torch.dtype, providers: list[str]) -> dict[str, Callable | str]:
    """``name -> loss function`` for each provider that can run, or ``name -> reason`` for those that can't."""
    import fastui.backends as B
    import fastui.functional as FF
    from fastui import ops

    probe = torch.zeros(2, 8, dtype=dtype, device=device)
    out: dict[str, Callable | str] = {}
    for name in providers:
        if name == "eager":
            out[name] = FF.score_distill_loss
        elif name == "compile":
            out[name] = torch.compile(FF.score_distill_loss, dynamic=False)
        elif name in FUSED:
            why = B.reasons(name, probe, probe, probe, automatic=True)
            out[name] = "; ".join(why) if why else (lambda *a, _n=name, **k: ops.score_distill_loss(*a, backend=_n,
                                                                                                   **k))
        else:
            raise SystemExit(f"unknown provider {name!r}; choose from eager, compile, {', '.join(FUSED)}")
    return out


def bench_one(fn: Callable, batch: int, chw, dtype, device: str, reps: int, max_seconds: float) -> dict:
    """Time forward+backward of ``fn`` on one shape; returns timing, GB/s and peak-memory columns."""
    (x, dt, df), sigma, log_ratio = make_inputs(batch, chw, dtype, device)

    def step():
        loss = fn(x, dt, df, sigma, log_ratio, divergence="fkl")
        return torch.autograd.grad(loss, (x, dt, df))

    t_first = time.perf_counter()
    step()  # the first call compiles (torch.compile, Triton JIT): reported separately, never in the percentiles
    synchronize(device)
    first_s = time.perf_counter() - t_first
    stats = time_ms(step, reps=reps, warmup=2, device=device, max_seconds=max_seconds)
    peak = "NA"
    if torch.device(device).type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        peak = f"{(torch.cuda.max_memory_allocated(device) - base) / 2**20:.2f}"
    nbytes = 6 * x.numel() * x.element_size()
    return {**{k: f"{v:.4f}" for k, v in stats.items()}, "gbs": nbytes / (stats["p50_ms"] * 1e-3) / 1e9,
            "bytes": nbytes, "extra_peak_mib": peak, "first_call_s": f"{first_s:.2f}"}


def plot(rows: list[dict], path: Path) -> Path | None:
    """Grouped bars of GB/s per shape and provider, one panel per dtype (PNG). ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot", file=sys.stderr)
        return None
    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(11, 3.8 * len(dtypes)), squeeze=False)
    for ax, dt in zip(axes[:, 0], dtypes):
        sub = [r for r in rows if r["dtype"] == dt]
        shapes = list(dict.fromkeys(r["shape"] for r in sub))
        provs = list(dict.fromkeys(r["provider"] for r in sub))
        width = 0.8 / max(1, len(provs))
        for j, p in enumerate(provs):
            vals = [next((float(r["gbs"]) for r in sub if r["shape"] == s and r["provider"] == p), 0.0)
                    for s in shapes]
            ax.bar([i + j * width for i in range(len(shapes))], vals, width, label=p)
        copy = float(sub[0]["copy_gbs"])
        ax.axhline(copy, color="k", ls="--", lw=1, label=f"copy {copy:.0f} GB/s")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], shapes, rotation=15, fontsize=8)
        ax.set_ylabel("effective GB/s (fwd+bwd)")
        ax.set_title(f"{sub[0]['device']} {dt}: fused score-distillation loss, 3 inputs read + 3 grads written")
        ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, append CSV rows, draw the plot. Returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few shapes, fp32 only on the CPU (under 3 minutes)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default=None, help="comma list of fp32,bf16,fp16 (default fp32,bf16; quick CPU fp32)")
    ap.add_argument("--providers", default="eager,compile," + ",".join(FUSED))
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 50 GPU, 10 CPU, 5 quick CPU)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new shapes after this many seconds")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to append to")
    ap.add_argument("--plot", type=Path, default=None, help="PNG path (default: beside the CSV)")
    args = ap.parse_args(argv)

    device = args.device
    gpu = torch.device(device).type == "cuda"
    if gpu and not torch.cuda.is_available():
        print("--device cuda but no CUDA device", file=sys.stderr)
        return 2
    shapes = (QUICK_GPU_SHAPES if gpu else QUICK_CPU_SHAPES) if args.quick else (GPU_SHAPES if gpu else CPU_SHAPES)
    dtypes = args.dtypes or ("fp32" if args.quick and not gpu else "fp32,bf16")
    reps = args.reps or (50 if gpu else (5 if args.quick else 10))
    max_seconds = 2.0 if gpu else (4.0 if args.quick else 10.0)
    prov = provenance(device)
    copy_gbs = copy_bandwidth_gbs(device, nbytes=(512 << 20) if gpu else (64 << 20))
    print(f"# {prov['device']} | torch {prov['torch']} | triton {prov['triton']} | {prov['git_sha']} | "
          f"copy {copy_gbs:.1f} GB/s")
    rows = []
    t_start = time.perf_counter()
    for dname in dtypes.split(","):
        dtype = DTYPES[dname.strip()]
        fns = provider_fns(device, dtype, args.providers.split(","))
        for name, fn in fns.items():
            if isinstance(fn, str):
                print(f"skip {name} ({dname}): {fn}")
        for label, batch, chw in shapes:
            shape = f"{label} B={batch} {'x'.join(map(str, chw))}"
            if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
                print(f"budget of {args.budget_s:.0f}s spent: skipping {dname} {shape}")
                continue
            base_ms = None
            for name, fn in fns.items():
                if isinstance(fn, str):
                    continue
                try:
                    res = bench_one(fn, batch, chw, dtype, device, reps, max_seconds)
                except Exception as exc:  # noqa: BLE001 - one failing provider must not lose the others' rows
                    print(f"FAILED {name} {dname} {shape}: {type(exc).__name__}: {exc}")
                    continue
                p50 = float(res["p50_ms"])
                base_ms = p50 if name == "eager" else base_ms
                speedup = f"{base_ms / p50:.2f}" if base_ms else "NA"
                row = {"bench": "kernels", "op": "score_distill_fkl_fwd_bwd", "provider": name, "dtype": dname,
                       "shape": shape, "batch": batch, "chw": "x".join(map(str, chw)), **res,
                       "gbs": f"{res['gbs']:.2f}", "copy_gbs": f"{copy_gbs:.2f}",
                       "frac_of_copy": f"{res['gbs'] / copy_gbs:.3f}", "speedup_vs_eager": speedup, **prov}
                rows.append(row)
                print(f"{dname:5} {shape:28} {name:8} p50 {p50:9.3f} ms  p20 {float(res['p20_ms']):9.3f}  "
                      f"p80 {float(res['p80_ms']):9.3f}  {res['gbs']:8.2f} GB/s ({res['gbs'] / copy_gbs:5.2f} of copy)"
                      f"  x{speedup} vs eager  peak+ {res['extra_peak_mib']} MiB")
    written = append_csv(args.out, rows)
    print(f"appended {len(rows)} rows to {written}")
    png = plot(rows, args.plot or args.out.with_name(f"{args.out.stem}_{'gpu' if gpu else 'cpu'}.png")) if rows \
        else None
    if png:
        print(f"plot: {png}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
