"""Triton kernels of the score-distillation core and of the fake-score DSM loss (MATH.md §3, §5).

The ladder (STYLE.md 1): ``_sd_reduce_kernel`` / ``_sd_finish_kernel`` -> :func:`score_distill_fwd` (host launcher:
checks, allocation, grid) -> ``fastui.backends.triton.core_forward`` -> ``fastui.ops`` (custom op + autograd).

Each row (one sample, ``d`` values) is split into ``n_chunks`` chunks so that even a small batch (B = 8 at 3x64x64)
launches enough programs to fill the device: the grid is ``(B, n_chunks)``. Pass 1 writes one partial sum per
(row, chunk); pass 2 re-reduces the handful of partials of its row (in a fixed order: deterministic, no atomics),
computes the per-sample coefficients and writes its chunk of the three gradients; chunk 0 also writes the loss.
Loads are upcast to fp32; all sums and coefficients are fp32; gradients are stored in the input dtype.

Importing this module defines the kernels: ``TRITON_INTERPRET=1`` must be set before the first import to run them on
the CPU (tests). ``fastui.backends.triton`` imports it lazily for that reason.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["dsm_fwd", "plan_chunks", "score_distill_fwd"]

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read by triton.jit below, when the kernels are defined
WF_FLOOR = tl.constexpr(1e-5)  # same floor as fastui.functional.WF_FLOOR (the DMD normaliser w_f)
BLOCK = 1024  # elements per inner iteration of one program
MAX_CHUNKS = 64  # partials per row re-reduced by pass 2 (a power of two, loaded as one vector)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def plan_chunks(batch: int, d: int, device: torch.device, block: int = BLOCK) -> tuple[int, int]:
    """``(n_chunks, chunk_len)`` such that ``batch * n_chunks`` programs cover about four waves of the device.

    ``chunk_len`` is a multiple of ``block``; ``n_chunks * chunk_len >= d``; ``n_chunks <= MAX_CHUNKS``.
    """
    if device.type == "cuda":
        target = 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        target = 4  # the interpreter runs programs one after another: few, long programs are fastest
    blocks = triton.cdiv(d, block)
    want = max(1, min(MAX_CHUNKS, blocks, triton.cdiv(target, batch)))
    chunk_len = triton.cdiv(blocks, want) * block
    return triton.cdiv(d, chunk_len), chunk_len


# --------------------------------------------------------------------------------------------------------------------
# Generator-loss core
# --------------------------------------------------------------------------------------------------------------------

@triton.jit
def _finite(v):
    # NaN compares false, +-inf exceeds the largest fp32: one comparison tests both.
    return tl.abs(v) <= 3.4028234663852886e38


# Pass 1, per row i and chunk j (delta = dt - df, e = df - x):
#   S_ij = sum delta * e,   F_ij = sum delta^2,   P_ij = sum delta * x,   A_ij = sum |x - dt|
# A non-finite input makes its row's sums non-finite, which is how pass 2 detects (and masks) such samples.
@triton.jit
def _sd_reduce_kernel(x_ptr, dt_ptr, df_ptr, part_ptr, d, chunk_len, n_chunks, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    base = row.to(tl.int64) * d
    start = chunk * chunk_len
    offs = tl.arange(0, BLOCK)
    s_acc = tl.zeros([BLOCK], dtype=tl.float32)
    f_acc = tl.zeros([BLOCK], dtype=tl.float32)
    p_acc = tl.zeros([BLOCK], dtype=tl.float32)
    a_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for it in range(0, chunk_len, BLOCK):
        idx = start + it + offs
        m = idx < d
        x = tl.load(x_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
        df = tl.load(df_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
        delta = dt - df
        s_acc += delta * (df - x)
        f_acc += delta * delta
        p_acc += delta * x
        a_acc += tl.abs(x - dt)
    out = part_ptr + (row * n_chunks + chunk) * 4
    tl.store(out + 0, tl.sum(s_acc, axis=0))
    tl.store(out + 1, tl.sum(f_acc, axis=0))
    tl.store(out + 2, tl.sum(p_acc, axis=0))
    tl.store(out + 3, tl.sum(a_acc, axis=0))


# Pass 2: S, F, P, A = sums of the partials; inv = 1 / max(A / d, 1e-5) (or 1); a = kA inv, b = kB inv,
#   c = clip((kC0 + kCF F + kCS S) inv);  L = a S + b F + c P;
#   dL/ddt = a e + 2 b delta,  dL/ddf = a (delta - e) - 2 b delta,  dL/dx = (c - a) delta   (zero where invalid).
@triton.jit
def _sd_finish_kernel(x_ptr, dt_ptr, df_ptr, k_ptr, part_ptr, loss_ptr, valid_ptr, gx_ptr, gdt_ptr, gdf_ptr,
                      batch, d, chunk_len, n_chunks, c_clip,
                      NORMALIZE: tl.constexpr, NEED_GRADS: tl.constexpr, NC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    cidx = tl.arange(0, NC)
    cm = cidx < n_chunks
    parts = part_ptr + (row * n_chunks + cidx) * 4
    s_sum = tl.sum(tl.load(parts + 0, mask=cm, other=0.0), axis=0)
    f_sum = tl.sum(tl.load(parts + 1, mask=cm, other=0.0), axis=0)
    p_sum = tl.sum(tl.load(parts + 2, mask=cm, other=0.0), axis=0)
    a_sum = tl.sum(tl.load(parts + 3, mask=cm, other=0.0), axis=0)
    ka = tl.load(k_ptr + row)
    kb = tl.load(k_ptr + batch + row)
    kc0 = tl.load(k_ptr + 2 * batch + row)
    kcf = tl.load(k_ptr + 3 * batch + row)
    kcs = tl.load(k_ptr + 4 * batch + row)
    valid = (_finite(s_sum) & _finite(f_sum) & _finite(p_sum) & _finite(a_sum) & _finite(ka) & _finite(kb)
             & _finite(kc0) & _finite(kcf) & _finite(kcs))
    if NORMALIZE:
        inv = 1.0 / tl.maximum(a_sum / d, WF_FLOOR)
    else:
        inv = 1.0
    a = tl.where(valid, ka * inv, 0.0)
    b = tl.where(valid, kb * inv, 0.0)
    c = (kc0 + kcf * f_sum + kcs * s_sum) * inv
    c = tl.where(valid, tl.minimum(tl.maximum(c, -c_clip), c_clip), 0.0)
    if chunk == 0:
        loss = a * s_sum + b * f_sum + c * p_sum
        tl.store(loss_ptr + row, tl.where(valid, loss, 0.0))
        tl.store(valid_ptr + row, valid.to(tl.int8))
    if NEED_GRADS:
        base = row.to(tl.int64) * d
        start = chunk * chunk_len
        offs = tl.arange(0, BLOCK)
        for it in range(0, chunk_len, BLOCK):
            idx = start + it + offs
            m = idx < d
            x = tl.load(x_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
            df = tl.load(df_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
            delta = dt - df
            e = df - x
            gdt = a * e + 2.0 * b * delta
            gdf = a * (delta - e) - 2.0 * b * delta
            gx = (c - a) * delta
            # a, b, c are 0 on invalid rows but 0 * NaN is NaN: mask the values too.
            gdt = tl.where(valid, gdt, 0.0)
            gdf = tl.where(valid, gdf, 0.0)
            gx = tl.where(valid, gx, 0.0)
            tl.store(gx_ptr + base + idx, gx.to(gx_ptr.dtype.element_ty), mask=m)
            tl.store(gdt_ptr + base + idx, gdt.to(gdt_ptr.dtype.element_ty), mask=m)
            tl.store(gdf_ptr + base + idx, gdf.to(gdf_ptr.dtype.element_ty), mask=m)


def _check_2d(*tensors: torch.Tensor) -> None:
    ref = tensors[0]
    for t in tensors:
        if t.ndim != 2 or not t.is_contiguous() or t.shape != ref.shape or t.dtype != ref.dtype:
            raise ValueError("triton kernels take contiguous [B, d] tensors of one shape and dtype")
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"triton kernels support fp32, bf16 and fp16, got {t.dtype}")


def score_distill_fwd(x: torch.Tensor, dt: torch.Tensor, df: torch.Tensor, k: torch.Tensor, normalize: bool,
                      c_clip: float, need_grads: bool):
    """Host launcher of the fused core (contract 1 of the team brief).

    Args:
        x, dt, df: contiguous ``[B, d]`` tensors of one dtype (fp32, bf16, fp16) on one device.
        k: ``[5, B]`` fp32 coefficient rows ``kA, kB, kC0, kCF, kCS``.
        normalize: multiply the coefficients by ``1 / w_f`` (the DMD normaliser, computed here).
        c_clip: clip of ``|c|`` (``inf`` for none).
        need_grads: also write the three input gradients.

    Returns:
        ``(loss [B] fp32, valid [B] bool, gx, gdt, gdf)``; the gradients are ``[B, d]`` in the input dtype, or
        ``None`` when ``need_grads`` is false.
    """
    _check_2d(x, dt, df)
    batch, d = x.shape
    k = k.to(device=x.device, dtype=torch.float32).contiguous()
    n_chunks, chunk_len = plan_chunks(batch, d, x.device)
    part = torch.empty((batch, n_chunks, 4), dtype=torch.float32, device=x.device)
    loss = torch.empty(batch, dtype=torch.float32, device=x.device)
    valid = torch.empty(batch, dtype=torch.int8, device=x.device)
    _sd_reduce_kernel[(batch, n_chunks)](x, dt, df, part, d, chunk_len, n_chunks, BLOCK=BLOCK)
    clip = float(c_clip) if math.isfinite(c_clip) else 3.0e38
    nc = triton.next_power_of_2(n_chunks)
    if need_grads:
        gx, gdt, gdf = torch.empty_like(x), torch.empty_like(dt), torch.empty_like(df)
        _sd_finish_kernel[(batch, n_chunks)](x, dt, df, k, part, loss, valid, gx, gdt, gdf, batch, d, chunk_len,
                                             n_chunks, clip, NORMALIZE=bool(normalize), NEED_GRADS=True, NC=nc,
                                             BLOCK=BLOCK)
        return loss, valid.bool(), gx, gdt, gdf
    _sd_finish_kernel[(batch, 1)](x, dt, df, k, part, loss, valid, x, dt, df, batch, d, chunk_len, n_chunks, clip,
                                  NORMALIZE=bool(normalize), NEED_GRADS=False, NC=nc, BLOCK=BLOCK)
    return loss, valid.bool(), None, None, None


# --------------------------------------------------------------------------------------------------------------------
# Fake-score DSM loss
# --------------------------------------------------------------------------------------------------------------------

# Pass 1, per row i and chunk j:  Q_ij = sum (df - x)^2   (non-finite inputs make Q non-finite).
@triton.jit
def _dsm_reduce_kernel(df_ptr, x_ptr, part_ptr, d, chunk_len, n_chunks, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    base = row.to(tl.int64) * d
    start = chunk * chunk_len
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for it in range(0, chunk_len, BLOCK):
        idx = start + it + offs
        m = idx < d
        diff = tl.load(df_ptr + base + idx, mask=m, other=0.0).to(tl.float32) - tl.load(
            x_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
        acc += diff * diff
    tl.store(part_ptr + row * n_chunks + chunk, tl.sum(acc, axis=0))


# Pass 2:  L_i = lam_i Q_i,  dL_i/d df = 2 lam_i (df - x)   (zero on rows whose Q or lam is not finite).
@triton.jit
def _dsm_finish_kernel(df_ptr, x_ptr, lam_ptr, part_ptr, loss_ptr, valid_ptr, g_ptr, d, chunk_len, n_chunks,
                       NEED_GRADS: tl.constexpr, NC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    cidx = tl.arange(0, NC)
    q = tl.sum(tl.load(part_ptr + row * n_chunks + cidx, mask=cidx < n_chunks, other=0.0), axis=0)
    lam = tl.load(lam_ptr + row)
    valid = _finite(q) & _finite(lam)
    lam = tl.where(valid, lam, 0.0)
    if chunk == 0:
        tl.store(loss_ptr + row, tl.where(valid, lam * q, 0.0))
        tl.store(valid_ptr + row, valid.to(tl.int8))
    if NEED_GRADS:
        base = row.to(tl.int64) * d
        start = chunk * chunk_len
        offs = tl.arange(0, BLOCK)
        for it in range(0, chunk_len, BLOCK):
            idx = start + it + offs
            m = idx < d
            diff = tl.load(df_ptr + base + idx, mask=m, other=0.0).to(tl.float32) - tl.load(
                x_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
            g = tl.where(valid, 2.0 * lam * diff, 0.0)
            tl.store(g_ptr + base + idx, g.to(g_ptr.dtype.element_ty), mask=m)


def dsm_fwd(d_fake: torch.Tensor, x_g: torch.Tensor, lam: torch.Tensor, need_grads: bool):
    """Host launcher of the fake-score DSM loss ``L_i = lam_i sum_d (d_fake - x_g)^2``.

    Args:
        d_fake, x_g: contiguous ``[B, d]`` tensors of one dtype (fp32, bf16, fp16).
        lam: ``[B]`` fp32 per-sample weights (EDM's ``lambda(sigma)``).
        need_grads: also write ``dL_i / d d_fake``.

    Returns:
        ``(loss [B] fp32, valid [B] bool, g_dfake [B, d] in the input dtype or None)``.
    """
    _check_2d(d_fake, x_g)
    batch, d = d_fake.shape
    lam = lam.to(device=d_fake.device, dtype=torch.float32).contiguous()
    n_chunks, chunk_len = plan_chunks(batch, d, d_fake.device)
    part = torch.empty((batch, n_chunks), dtype=torch.float32, device=d_fake.device)
    loss = torch.empty(batch, dtype=torch.float32, device=d_fake.device)
    valid = torch.empty(batch, dtype=torch.int8, device=d_fake.device)
    _dsm_reduce_kernel[(batch, n_chunks)](d_fake, x_g, part, d, chunk_len, n_chunks, BLOCK=BLOCK)
    nc = triton.next_power_of_2(n_chunks)
    g = torch.empty_like(d_fake) if need_grads else d_fake
    grid = (batch, n_chunks if need_grads else 1)
    _dsm_finish_kernel[grid](d_fake, x_g, lam, part, loss, valid, g, d, chunk_len, n_chunks,
                             NEED_GRADS=bool(need_grads), NC=nc, BLOCK=BLOCK)
    return loss, valid.bool(), (g if need_grads else None)
