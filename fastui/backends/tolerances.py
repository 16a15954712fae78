"""Parity tolerances of every backend against the fp64 reference, in ONE table (STYLE.md 4).

Error of a result ``y`` against the float64 reference ``y64`` (same inputs, upcast): ``max |y - y64| / max |y64|``.
A backend passes when ``err_backend <= K * err_reference + FLOOR``, where ``err_reference`` is the error of the
pure-torch reference run in the same dtype: a fused kernel may be at most ``K`` times as wrong as PyTorch itself.
``FLOOR`` absorbs the case where the reference happens to be exact (e.g. fp32 gradients that round identically).

Example:
    >>> from fastui.backends.tolerances import within
    >>> within("cpp", torch.float32, err_backend=2e-7, err_reference=1e-7)
    True
"""

from __future__ import annotations

import torch

__all__ = ["TOLERANCES", "rel_error", "tolerance", "within"]

_F32, _BF16, _F16 = torch.float32, torch.bfloat16, torch.float16

# backend -> dtype -> (K, FLOOR). fp32: sums in another order (blocked/chunked vs torch's pairwise) cost a few ulps of
# the sums; bf16/fp16: the gradients are rounded once in the kernel and once more after the grad_output scaling.
TOLERANCES: dict[str, dict[torch.dtype, tuple[float, float]]] = {
    "torch": {_F32: (4.0, 1e-6), _BF16: (3.0, 2e-3), _F16: (3.0, 3e-4)},
    "cpp": {_F32: (8.0, 2e-6), _BF16: (4.0, 4e-3), _F16: (4.0, 5e-4)},
    "triton": {_F32: (8.0, 2e-6), _BF16: (4.0, 4e-3), _F16: (4.0, 5e-4)},
    "cuda": {_F32: (8.0, 2e-6), _BF16: (4.0, 4e-3), _F16: (4.0, 5e-4)},
}


def tolerance(backend: str, dtype: torch.dtype) -> tuple[float, float]:
    """``(K, FLOOR)`` of ``backend`` in ``dtype`` (fp64 runs compare exactly-ish: ``(4, 1e-12)``)."""
    if dtype == torch.float64:
        return 4.0, 1e-12
    return TOLERANCES[backend][dtype]


def rel_error(y: torch.Tensor, y64: torch.Tensor) -> float:
    """``max |y - y64| / max |y64|`` (absolute error when ``y64`` is all zero); NaN if ``y`` has non-finite values."""
    y, y64 = y.detach().to(torch.float64), y64.detach().to(torch.float64)
    if y.shape != y64.shape:
        raise ValueError(f"shape {list(y.shape)} vs reference {list(y64.shape)}")
    if not torch.isfinite(y).all():
        return float("nan")
    scale = y64.abs().max().item() if y64.numel() else 0.0
    err = (y - y64).abs().max().item() if y64.numel() else 0.0
    return err / scale if scale > 0 else err


def within(backend: str, dtype: torch.dtype, err_backend: float, err_reference: float) -> bool:
    """Whether ``err_backend`` passes the table's bound for ``backend`` in ``dtype`` (NaN fails)."""
    k, floor = tolerance(backend, dtype)
    return err_backend <= k * err_reference + floor


def parity_errors(backend: str, dtype: torch.dtype, fn_ref, fn_ops, inputs) -> dict[str, tuple[float, float]]:
    """Errors of a backend and of the reference, both in ``dtype``, against the reference in float64.

    Args:
        fn_ref: ``fn_ref(*tensors) -> [B]`` per-sample loss of the reference (``fastui.functional``).
        fn_ops: ``fn_ops(*tensors, backend=name) -> [B]`` the dispatched twin (``fastui.ops``).
        inputs: the differentiable tensors (``[B, ...]``); they are rounded to ``dtype`` once, and the float64 run
            uses those rounded values, so only the arithmetic differs.

    Returns:
        ``{"loss" | "grad0" | "grad1" | ...: (err_backend, err_reference)}``.
    """
    base = [t.detach().to(dtype) for t in inputs]

    def run(fn, tensors):
        leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
        loss = fn(*leaves)
        grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
        return [loss] + [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]

    out64 = run(fn_ref, [t.to(torch.float64) for t in base])
    out_ref = run(fn_ref, base)
    out_be = run(lambda *ts: fn_ops(*ts, backend=backend), base)
    names = ["loss"] + [f"grad{i}" for i in range(len(base))]
    for name, y, t in zip(names[1:], out_be[1:], base):
        if y.dtype != t.dtype:
            raise AssertionError(f"{backend}: {name} came back in {y.dtype}, input was {t.dtype}")
    return {n: (rel_error(b, r64), rel_error(r, r64)) for n, b, r, r64 in zip(names, out_be, out_ref, out64)}


def assert_parity(backend: str, dtype: torch.dtype, errors: dict[str, tuple[float, float]], what: str = "") -> None:
    """Raise AssertionError naming every output whose backend error exceeds the table's bound."""
    bad = [f"{n}: backend {b:.3g} vs reference {r:.3g} (K, FLOOR = {tolerance(backend, dtype)})"
           for n, (b, r) in errors.items() if not within(backend, dtype, b, r)]
    if bad:
        raise AssertionError(f"{backend} {dtype} {what}: " + "; ".join(bad))
