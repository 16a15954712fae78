"""The torch backend: the reference core (``fastui.functional``) in closed form, wrapped to the backend contract.

Always available, any float dtype (fp64 included: the tests' ground truth). It evaluates the formulas of
:func:`fastui.functional.score_distill_core_reference`'s module docstring directly instead of calling autograd, so it
runs inside a custom op (below autograd) and under ``torch.compile``; the tests check it against the autograd reference.
"""

from __future__ import annotations

import torch

from ..functional import WF_FLOOR, accumulation_dtype

NAME = "torch"


def unavailable_reasons(x_g: torch.Tensor, d_teacher: torch.Tensor, d_fake: torch.Tensor) -> list[str]:
    """The reference runs everywhere: no reasons."""
    return []


def core_forward(x: torch.Tensor, dt: torch.Tensor, df: torch.Tensor, k: torch.Tensor, normalize: bool,
                 c_clip: float, need_grads: bool):
    """Per-sample core loss and its input gradients (contract 1 of the team brief).

    Shapes:
        ``x, dt, df``: ``[B, d]`` one dtype; ``k``: ``[5, B]``.

    Returns:
        ``(loss [B], valid [B] bool, gx, gdt, gdf)``; loss in fp32 (fp64 for fp64 inputs), gradients ``[B, d]`` in the
        input dtype (``None`` unless ``need_grads``), zero on invalid rows.
    """
    acc = accumulation_dtype(x, dt, df, k)
    xa, dta, dfa = x.to(acc), dt.to(acc), df.to(acc)
    k = k.to(device=x.device, dtype=acc)
    delta = dta - dfa
    e = dfa - xa
    s_sum = (delta * e).sum(1)
    f_sum = (delta * delta).sum(1)
    p_sum = (delta * xa).sum(1)
    a_sum = (xa - dta).abs().sum(1)
    valid = torch.isfinite(torch.stack([s_sum, f_sum, p_sum, a_sum])).all(0) & torch.isfinite(k).all(0)
    zero = torch.zeros((), dtype=acc, device=x.device)
    s_sum, f_sum, p_sum, a_sum = (torch.where(valid, t, zero) for t in (s_sum, f_sum, p_sum, a_sum))
    k = torch.where(valid[None], k, zero)
    inv = 1.0 / (a_sum / x.shape[1]).clamp_min(WF_FLOOR) if normalize else torch.ones_like(s_sum)
    a = k[0] * inv
    b = k[1] * inv
    c = ((k[2] + k[3] * f_sum + k[4] * s_sum) * inv).clamp(-c_clip, c_clip)
    loss = a * s_sum + b * f_sum + c * p_sum
    if not need_grads:
        return loss, valid, None, None, None
    a, b, c = a[:, None], b[:, None], c[:, None]
    a_e = a * e
    gdt = torch.addcmul(a_e, 2 * b, delta)
    gdf = torch.addcmul(-a_e, a - 2 * b, delta)
    gx = (c - a) * delta
    invalid = ~valid[:, None]  # rows with non-finite inputs hold NaN here (0 * NaN): zero them in place
    return (loss, valid, gx.masked_fill_(invalid, 0).to(x.dtype), gdt.masked_fill_(invalid, 0).to(dt.dtype),
            gdf.masked_fill_(invalid, 0).to(df.dtype))


def dsm_forward(d_fake: torch.Tensor, x_g: torch.Tensor, lam: torch.Tensor, need_grads: bool):
    """Fake-score DSM per-sample loss ``L_i = lam_i sum_d (d_fake - x_g)^2`` and ``dL_i / d d_fake``.

    Returns:
        ``(loss [B], valid [B] bool, g_dfake [B, d] in the input dtype or None)``.
    """
    acc = accumulation_dtype(d_fake, x_g, lam)
    diff = d_fake.to(acc) - x_g.to(acc)
    lam = lam.to(device=d_fake.device, dtype=acc)
    q = (diff * diff).sum(1)
    valid = torch.isfinite(q) & torch.isfinite(lam)
    zero = torch.zeros((), dtype=acc, device=d_fake.device)
    lam = torch.where(valid, lam, zero)
    loss = torch.where(valid, lam * q, zero)
    if not need_grads:
        return loss, valid, None
    g = (2 * lam[:, None] * diff).masked_fill_(~valid[:, None], 0)
    return loss, valid, g.to(d_fake.dtype)
