"""The cuda backend: the core and the DSM loss as CUDA kernels (``fastui._C_cuda``, csrc/core_cuda.cu).

The extension is optional (built by ``setup.py`` when ``nvcc`` is found) and links the CUDA runtime statically, so it
imports on machines without a GPU or driver; "no CUDA device" is then one of :func:`unavailable_reasons`. The kernels
take raw addresses and a stream: this module allocates every output (and the small partial-sum workspace) with torch
on the inputs' device and enqueues the kernels on torch's current stream, so they order with the surrounding ops and
never synchronise the host.
"""

from __future__ import annotations

import functools

import torch

NAME = "cuda"

from .cpp import _DTYPE_CODES, _dtype_reasons  # one dtype table (csrc/fastui_native.h) for both native modules

_module = None
_import_error: str | None = None
_device_count: int | None = None
_device_error = ""


def _load():
    """``fastui._C_cuda`` or ``None``; imported once, lazily."""
    global _module, _import_error
    if _module is None and _import_error is None:
        try:
            from .. import _C_cuda
            _module = _C_cuda
        except ImportError as exc:
            _import_error = f"{type(exc).__name__}: {exc}"
    return _module


def module_error() -> str | None:
    """The import error of ``fastui._C_cuda`` (``None`` when it imports)."""
    _load()
    return _import_error


def device_status() -> tuple[int, str]:
    """``(devices the module's CUDA runtime sees, its error text when it sees none)``; cached, never raises."""
    global _device_count, _device_error
    mod = _load()
    if mod is None:
        return 0, f"fastui._C_cuda not built: {_import_error}"
    if _device_count is None:
        _device_count, _device_error = mod.device_count()
    return _device_count, _device_error


def unavailable_reasons(x_g: torch.Tensor, d_teacher: torch.Tensor, d_fake: torch.Tensor) -> list[str]:
    """Why this backend cannot run these inputs ([] = it can).

    Reasons: ``fastui._C_cuda`` not built (with the import error), no CUDA device (with the runtime's error), tensors
    not on a CUDA device, dtype unsupported (fp64: the torch backend handles it).
    """
    out = []
    if _load() is None:
        out.append(f"fastui._C_cuda not built: {_import_error} (pip install -e . with nvcc on PATH, see README)")
    else:
        count, err = device_status()
        if count == 0:
            out.append(f"no CUDA device ({err or 'the CUDA runtime sees none'})")
    if any(t.device.type != "cuda" for t in (x_g, d_teacher, d_fake)):
        out.append("tensors not on a CUDA device")
    elif _module is not None and not out:
        cap = torch.cuda.get_device_capability(x_g.device)
        if not arch_supported(cap, getattr(_module, "ARCHS", "")):
            out.append(f"fastui._C_cuda has no code for compute capability {cap[0]}.{cap[1]} (built for "
                       f"{_module.ARCHS!r}; rebuild with FASTUI_CUDA_ARCHS)")
    return out + _dtype_reasons(x_g, d_teacher, d_fake)


def arch_supported(capability: tuple[int, int], archs: str) -> bool:
    """Whether a module built for ``archs`` (``"80;90"``, FASTUI_CUDA_ARCHS) runs on a GPU of ``capability``.

    Machine code for ``sm_XY`` runs on the same major version with minor >= Y; the PTX of the last arch (embedded by
    setup.py) is compiled by the driver for any newer GPU; ``XYa`` targets run on exactly ``X.Y``.
    """
    cc = capability[0] * 10 + capability[1]
    items = [a.strip() for a in archs.replace(",", ";").split(";") if a.strip()]
    if not items:
        return True  # unknown build: let the launch report a mismatch
    for a in items:
        num = int("".join(ch for ch in a if ch.isdigit()))
        if a[-1].isalpha():
            if cc == num:
                return True
        elif num // 10 == capability[0] and num <= cc:
            return True
    last = items[-1]
    return not last[-1].isalpha() and cc >= int(last)


def _require(x: torch.Tensor, *others: torch.Tensor) -> None:
    for t in (x, *others):
        if t.device != x.device or x.device.type != "cuda" or not t.is_contiguous() or t.dim() != 2 \
                or t.shape != x.shape or t.dtype != x.dtype:
            raise ValueError("cuda backend: inputs must be contiguous [B, d] tensors on one CUDA device with one shape "
                             f"and dtype, got {[(tuple(u.shape), u.dtype, str(u.device)) for u in (x, *others)]}")
    if x.dtype not in _DTYPE_CODES:
        raise ValueError(f"cuda backend: dtype {x.dtype} unsupported")


def _row_vector(v: torch.Tensor, device: torch.device, batch: int, rows: int) -> torch.Tensor:
    return v.detach().to(device=device, dtype=torch.float32).reshape(rows, batch).contiguous()


@functools.lru_cache(maxsize=256)
def _num_chunks(batch: int, d: int, device: int) -> int:
    return _load().num_chunks(batch, d, device)  # asks the device's SM count: cached to keep launches cheap


def _launch_args(x: torch.Tensor, width: int):
    """Workspace (``B * chunks * width`` fp32), chunk count, device index and current stream handle of ``x``."""
    batch, d = x.shape
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    chunks = _num_chunks(batch, d, dev)
    work = torch.empty(batch * chunks * width, dtype=torch.float32, device=x.device)
    return work, chunks, dev, torch.cuda.current_stream(x.device).cuda_stream


def core_forward(x: torch.Tensor, dt: torch.Tensor, df: torch.Tensor, k: torch.Tensor, normalize: bool,
                 c_clip: float, need_grads: bool):
    """Per-sample core loss and input gradients (contract 1; semantics of ``functional.score_distill_core_reference``).

    Shapes:
        ``x, dt, df``: contiguous ``[B, d]`` on one CUDA device, one of fp32/bf16/fp16; ``k``: ``[5, B]`` fp32.

    Returns:
        ``(loss [B] fp32, valid [B] bool, gx, gdt, gdf)``; gradients ``[B, d]`` in the input dtype (``None`` unless
        ``need_grads``), zero on invalid rows. Enqueued on the current stream; no host synchronisation.
    """
    mod = _load()
    if mod is None:
        raise RuntimeError(f"fastui._C_cuda not built: {_import_error}")
    _require(x, dt, df)
    batch, d = x.shape
    k = _row_vector(k, x.device, batch, 5)
    loss = torch.empty(batch, dtype=torch.float32, device=x.device)
    valid = torch.empty(batch, dtype=torch.bool, device=x.device)
    grads = tuple(torch.empty_like(x) for _ in range(3)) if need_grads else (None, None, None)
    work, chunks, dev, stream = _launch_args(x, 4)
    mod.core_forward(x.data_ptr(), dt.data_ptr(), df.data_ptr(), k.data_ptr(), batch, d, _DTYPE_CODES[x.dtype],
                     bool(normalize), float(c_clip), loss.data_ptr(), valid.data_ptr(),
                     *[g.data_ptr() if g is not None else 0 for g in grads], work.data_ptr(), chunks, dev, stream)
    return (loss, valid, *grads)


def dsm_forward(d_fake: torch.Tensor, x_g: torch.Tensor, lam: torch.Tensor, need_grads: bool):
    """Fake-score DSM per-sample loss ``L_i = lam_i sum_d (d_fake - x_g)^2`` and ``dL_i / d d_fake`` (contract 1).

    Shapes:
        ``d_fake, x_g``: contiguous ``[B, d]`` on one CUDA device, one dtype; ``lam``: ``[B]`` fp32.

    Returns:
        ``(loss [B] fp32, valid [B] bool, g_dfake [B, d] in the input dtype or None)``; invalid rows (a non-finite
        input or ``lam``) have loss 0 and zero gradient.
    """
    mod = _load()
    if mod is None:
        raise RuntimeError(f"fastui._C_cuda not built: {_import_error}")
    _require(d_fake, x_g)
    batch, d = d_fake.shape
    lam = _row_vector(lam, d_fake.device, batch, 1)
    loss = torch.empty(batch, dtype=torch.float32, device=d_fake.device)
    valid = torch.empty(batch, dtype=torch.bool, device=d_fake.device)
    g = torch.empty_like(d_fake) if need_grads else None
    work, chunks, dev, stream = _launch_args(d_fake, 2)
    mod.dsm_forward(d_fake.data_ptr(), x_g.data_ptr(), lam.data_ptr(), batch, d, _DTYPE_CODES[d_fake.dtype],
                    loss.data_ptr(), valid.data_ptr(), g.data_ptr() if g is not None else 0, work.data_ptr(), chunks,
                    dev, stream)
    return loss, valid, g
