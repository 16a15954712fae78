"""The cpp backend: the core and the DSM loss in C++ on the CPU (``fastui._C``, OpenMP threads, SIMD loops).

The extension is optional (built by ``setup.py`` when a C++ compiler works, see csrc/): when it is missing, the reason
(with the import error) is reported by :func:`unavailable_reasons` and dispatch falls back. The kernels take raw
addresses, so this module allocates every output with torch and passes ``data_ptr()`` s; the inputs must already be
contiguous ``[B, d]`` tensors of one dtype (the ops layer guarantees it).
"""

from __future__ import annotations

import torch

NAME = "cpp"

# dtype codes of csrc/fastui_native.h (enum DType)
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

_module = None
_import_error: str | None = None


def _load():
    """``fastui._C`` or ``None``; imported once, lazily (never inside a hot loop's first step failure)."""
    global _module, _import_error
    if _module is None and _import_error is None:
        try:
            from .. import _C
            _module = _C
        except ImportError as exc:
            _import_error = f"{type(exc).__name__}: {exc}"
    return _module


def module_error() -> str | None:
    """The import error of ``fastui._C`` (``None`` when it imports)."""
    _load()
    return _import_error


def _dtype_reasons(*tensors: torch.Tensor) -> list[str]:
    out = []
    for dt in sorted({t.dtype for t in tensors}, key=str):
        if dt not in _DTYPE_CODES:
            out.append(f"dtype {str(dt).replace('torch.', '')} unsupported (native backends take fp32/bf16/fp16; "
                       "the torch backend handles it)")
    if len({t.dtype for t in tensors}) > 1:
        out.append("inputs of mixed dtypes (the ops layer unifies them)")
    return out


def unavailable_reasons(x_g: torch.Tensor, d_teacher: torch.Tensor, d_fake: torch.Tensor) -> list[str]:
    """Why this backend cannot run these inputs ([] = it can).

    Reasons: ``fastui._C`` not built (with the import error), tensors not on the CPU, dtype unsupported.
    """
    out = []
    if _load() is None:
        out.append(f"fastui._C not built: {_import_error} (pip install -e . with a C++ compiler, see README)")
    if any(t.device.type != "cpu" for t in (x_g, d_teacher, d_fake)):
        out.append("tensors not on the CPU")
    return out + _dtype_reasons(x_g, d_teacher, d_fake)


def _require(x: torch.Tensor, *others: torch.Tensor) -> None:
    for t in (x, *others):
        if t.device.type != "cpu" or not t.is_contiguous() or t.dim() != 2 or t.shape != x.shape or t.dtype != x.dtype:
            raise ValueError("cpp backend: inputs must be contiguous [B, d] CPU tensors of one shape and dtype, got "
                             f"{[(tuple(u.shape), u.dtype, u.device.type, u.is_contiguous()) for u in (x, *others)]}")
    if x.dtype not in _DTYPE_CODES:
        raise ValueError(f"cpp backend: dtype {x.dtype} unsupported")


def _row_vector(v: torch.Tensor, batch: int, rows: int) -> torch.Tensor:
    return v.detach().to(device="cpu", dtype=torch.float32).reshape(rows, batch).contiguous()


def core_forward(x: torch.Tensor, dt: torch.Tensor, df: torch.Tensor, k: torch.Tensor, normalize: bool,
                 c_clip: float, need_grads: bool):
    """Per-sample core loss and input gradients (contract 1; semantics of ``functional.score_distill_core_reference``).

    Shapes:
        ``x, dt, df``: contiguous ``[B, d]`` CPU, one of fp32/bf16/fp16; ``k``: ``[5, B]`` fp32.

    Returns:
        ``(loss [B] fp32, valid [B] bool, gx, gdt, gdf)``; gradients ``[B, d]`` in the input dtype (``None`` unless
        ``need_grads``), zero on invalid rows.
    """
    mod = _load()
    if mod is None:
        raise RuntimeError(f"fastui._C not built: {_import_error}")
    _require(x, dt, df)
    batch, d = x.shape
    k = _row_vector(k, batch, 5)
    loss = torch.empty(batch, dtype=torch.float32)
    valid = torch.empty(batch, dtype=torch.bool)
    grads = tuple(torch.empty_like(x) for _ in range(3)) if need_grads else (None, None, None)
    addr = [g.data_ptr() if g is not None else 0 for g in grads]
    mod.core_forward(x.data_ptr(), dt.data_ptr(), df.data_ptr(), k.data_ptr(), batch, d, _DTYPE_CODES[x.dtype],
                     bool(normalize), float(c_clip), loss.data_ptr(), valid.data_ptr(), *addr,
                     torch.get_num_threads())
    return (loss, valid, *grads)


def dsm_forward(d_fake: torch.Tensor, x_g: torch.Tensor, lam: torch.Tensor, need_grads: bool):
    """Fake-score DSM per-sample loss ``L_i = lam_i sum_d (d_fake - x_g)^2`` and ``dL_i / d d_fake`` (contract 1).

    Shapes:
        ``d_fake, x_g``: contiguous ``[B, d]`` CPU, one dtype; ``lam``: ``[B]`` fp32.

    Returns:
        ``(loss [B] fp32, valid [B] bool, g_dfake [B, d] in the input dtype or None)``; invalid rows (a non-finite
        input or ``lam``) have loss 0 and zero gradient.
    """
    mod = _load()
    if mod is None:
        raise RuntimeError(f"fastui._C not built: {_import_error}")
    _require(d_fake, x_g)
    batch, d = d_fake.shape
    lam = _row_vector(lam, batch, 1)
    loss = torch.empty(batch, dtype=torch.float32)
    valid = torch.empty(batch, dtype=torch.bool)
    g = torch.empty_like(d_fake) if need_grads else None
    mod.dsm_forward(d_fake.data_ptr(), x_g.data_ptr(), lam.data_ptr(), batch, d, _DTYPE_CODES[d_fake.dtype],
                    loss.data_ptr(), valid.data_ptr(), g.data_ptr() if g is not None else 0, torch.get_num_threads())
    return loss, valid, g
