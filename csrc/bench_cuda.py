"""GPU timing of fastui._C_cuda's core and DSM (forward + gradients) against the eager and compiled reference.

Usage: ``python csrc/bench_cuda.py [--shapes 8x3x64x64 64x3x32x32] [--dtypes float32 bfloat16]``. Prints one line
per (shape, dtype): CUDA-event medians in microseconds, and the native kernels' effective bandwidth (bytes read and
written by the core: 3 inputs + 3 gradients).
"""

from __future__ import annotations

import argparse

import torch

import fastui.functional as FF
from fastui.backends import cuda


def _time_us(fn, reps: int = 50) -> float:
    for _ in range(5):
        fn()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(start, end):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    ts = sorted(s.elapsed_time(e) * 1e3 for s, e in zip(start, end))
    return ts[len(ts) // 2]


def bench_case(b: int, rest: list[int], name: str, args) -> None:
    """Time one (shape, dtype) case and print a line."""
    dtype = getattr(torch, name)
    x, dt, df = (torch.randn(b, *rest, device="cuda", dtype=dtype) for _ in range(3))
    coeffs = FF.score_distill_coefficients(torch.rand(b, device="cuda") + 0.1, torch.randn(b, device="cuda"),
                                           divergence="fkl")
    flat = [t.reshape(b, -1) for t in (x, dt, df)]

    def reference(core=FF.score_distill_core_reference):
        xs, dts, dfs = (t.detach().requires_grad_() for t in (x, dt, df))
        loss, _ = core(xs, dts, dfs, coeffs)
        loss.sum().backward()

    rows = {"cuda": _time_us(lambda: cuda.core_forward(*flat, coeffs.k, True, float("inf"), True)),
            "eager": _time_us(reference)}
    if not args.no_compile:
        compiled = torch.compile(FF.score_distill_core_reference)
        rows["compile"] = _time_us(lambda: reference(compiled))
    lam = torch.rand(b, device="cuda")
    rows["dsm"] = _time_us(lambda: cuda.dsm_forward(flat[2], flat[0], lam, True))
    nbytes = 6 * x.numel() * x.element_size()
    gbs = nbytes / (rows["cuda"] * 1e-6) / 1e9
    line = ", ".join(f"{k} {v:.1f} us" for k, v in rows.items())
    ups = ", ".join(f"x{rows[k] / rows['cuda']:.1f} vs {k}" for k in ("eager", "compile") if k in rows)
    print(f"{'x'.join(map(str, [b, *rest]))} {name}: {line}; core {gbs:.0f} GB/s; {ups}", flush=True)


def bench_shape(shape: str, args) -> None:
    """Every dtype of one ``BxCxHxW`` shape."""
    b, *rest = (int(v) for v in shape.split("x"))
    for name in args.dtypes:
        bench_case(b, rest, name, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shapes", nargs="+", default=["8x3x64x64", "64x3x32x32", "256x3x64x64"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for shape in args.shapes:
        bench_shape(shape, args)

if __name__ == "__main__":
    main()
