"""CPU timing of fastui._C's core (forward + gradients) against the eager and torch.compile'd reference.

Usage: ``python csrc/bench_cpu.py [--shapes 64x3x32x32 32x3x64x64] [--reps 30] [--threads N]``. Prints one line per
shape: median milliseconds (p20/p50/p80) of each variant and the speed-ups. The reference variants run the autograd
forward plus ``loss.sum().backward()`` with the three inputs requiring grad: the same outputs (loss, valid, three
gradients).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastui.functional as FF
from fastui.backends import cpp


def _time(fn, reps: int) -> tuple[float, float, float]:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(ts, n=10)
    return q[1], statistics.median(ts), q[7]


def bench_shape(shape: str, args) -> None:
    """Time the three variants on one ``BxCxHxW`` shape and print a line."""
    b, *rest = (int(v) for v in shape.split("x"))
    x, dt, df = (torch.randn(b, *rest) for _ in range(3))
    coeffs = FF.score_distill_coefficients(torch.rand(b) + 0.1, torch.randn(b), divergence="fkl")
    flat = [t.reshape(b, -1) for t in (x, dt, df)]

    def reference(core=FF.score_distill_core_reference):
        xs, dts, dfs = (t.detach().requires_grad_() for t in (x, dt, df))
        loss, valid = core(xs, dts, dfs, coeffs)
        loss.sum().backward()
        return loss, valid, xs.grad, dts.grad, dfs.grad

    def native():
        return cpp.core_forward(*flat, coeffs.k, coeffs.normalize, coeffs.c_clip, True)

    rows = {"eager": _time(reference, args.reps), "cpp": _time(native, args.reps)}
    if not args.no_compile:
        compiled = torch.compile(FF.score_distill_core_reference)
        rows["compile"] = _time(lambda: reference(compiled), args.reps)
    line = ", ".join(f"{k} {p50:.3f} ms ({p20:.3f}/{p80:.3f})" for k, (p20, p50, p80) in rows.items())
    ups = ", ".join(f"cpp vs {k} x{rows[k][1] / rows['cpp'][1]:.2f}" for k in rows if k != "cpp")
    print(f"{shape}: {line}; {ups}")



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shapes", nargs="+", default=["64x3x32x32", "32x3x64x64"])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for shape in args.shapes:
        bench_shape(shape, args)

if __name__ == "__main__":
    main()
