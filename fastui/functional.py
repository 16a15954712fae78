"""Pure-torch reference losses: the specification every fast backend is tested against (MATH.md §3-§6).

The generator losses of every method share one per-sample form (the *core*)::

    delta = D_teacher - D_fake          e = D_fake - x_g
    S = sum_pix delta * e               F = sum_pix delta^2
    P = sum_pix sg(delta) * x_g         A = sum_pix |x_g - D_teacher|
    inv = 1 / max(A / d, 1e-5)  if normalize else 1          (w_f = 1 / inv, the DMD normaliser)
    a = kA inv,  b = kB inv,  c = clip((kC0 + kCF F + kCS S) inv, +-c_clip)     (c detached)
    L_i = a S + b F + c P

with five per-sample coefficient rows ``k = [kA, kB, kC0, kCF, kCS]`` computed in Python from sigma, the density
ratio and the divergence (:func:`score_distill_coefficients`, :func:`preset_coefficients`). Kernels implement only the
core, so a new divergence or method never touches a kernel. Gradients of the core (what a fused kernel writes)::

    dL/dD_teacher = a e + 2 b delta
    dL/dD_fake    = a (delta - e) - 2 b delta
    dL/dx_g       = (c - a) delta

Samples with any non-finite input (or an overflowing sum) are excluded: their loss and gradients are exactly zero,
and ``reduction="mean"`` divides by the number of finite samples. Their count is returned as a tensor (no host sync).

Example:
    >>> import torch, fastui.functional as FF
    >>> x = torch.randn(4, 3, 8, 8, requires_grad=True)
    >>> dt, df = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    >>> loss = FF.score_distill_loss(x, dt, df, sigma=torch.full((4,), 0.5), divergence="fkl",
    ...                              log_ratio=torch.zeros(4))
    >>> loss.backward()
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import divergences as _div

__all__ = [
    "Coefficients",
    "check_inputs",
    "di_loss",
    "discriminator_loss",
    "dmd_loss",
    "dmd_normalizer",
    "edm_loss_weight",
    "fake_score_loss",
    "fdistill_loss",
    "gan_generator_loss",
    "log_density_ratio",
    "preset_coefficients",
    "preset_loss",
    "reduce_per_sample",
    "score_distill_coefficients",
    "score_distill_core_reference",
    "score_distill_loss",
    "sid_loss",
]

WF_FLOOR = 1e-5  # floor of the DMD normaliser w_f = mean_pix |x_g - D_teacher|
SIGMA_FLOOR = 1e-4  # floor of sigma wherever a power of it divides (fp32 safe: 1e-4^6 = 1e-24)

Weighting = str | torch.Tensor


class Coefficients(NamedTuple):
    """Per-sample coefficients of the core.

    Attributes:
        k: ``[5, B]`` rows ``kA, kB, kC0, kCF, kCS`` (accumulation dtype, detached).
        normalize: multiply by ``1 / w_f`` computed inside the core.
        c_clip: clip of ``|c|`` after normalisation (``inf`` for none).
    """

    k: torch.Tensor
    normalize: bool
    c_clip: float = float("inf")


# --------------------------------------------------------------------------------------------------------------------
# Validation (shared by every backend: same errors everywhere)
# --------------------------------------------------------------------------------------------------------------------


def _per_sample(name: str, value, batch: int, like: torch.Tensor, *, allow_scalar: bool) -> torch.Tensor:
    """Turn ``sigma`` / ``log_ratio`` / a weight into a ``[B]`` tensor on ``like``'s device, or raise ValueError."""
    if not torch.is_tensor(value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and allow_scalar:
            return torch.full((batch,), float(value), dtype=torch.float32, device=like.device)
        raise ValueError(f"{name} must be a tensor of shape [{batch}]" + (" or a number" if allow_scalar else "")
                         + f", got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {value.dtype}")
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but x_g is on {like.device}")
    if value.numel() == 1 and allow_scalar:
        return value.reshape(1).expand(batch)
    if value.ndim >= 1 and value.shape[0] == batch and value.numel() == batch:
        return value.reshape(batch)
    raise ValueError(f"{name} must have shape [{batch}] (one value per sample), got {list(value.shape)}")


def check_inputs(x_g, d_teacher, d_fake, sigma, log_ratio=None, *, names=("x_g", "d_teacher", "d_fake")):
    """Validate the generator-loss inputs once, above the backends.

    ``names`` are the argument names used in error messages (callers with other argument names pass theirs).

    Returns:
        ``(sigma [B], log_ratio [B] or None)``.

    Raises:
        ValueError: naming the argument and the shapes/dtypes/devices involved.
    """
    for name, t in zip(names, (x_g, d_teacher, d_fake)):
        if not torch.is_tensor(t):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor (fp32, bf16, fp16, fp64), got dtype {t.dtype}")
        if t.ndim < 1 or t.shape[0] == 0:
            raise ValueError(f"{name} must have shape [B, ...] with B >= 1, got {list(t.shape)}")
    for name, t in zip(names[1:], (d_teacher, d_fake)):
        if t.shape != x_g.shape:
            raise ValueError(f"{name} has shape {list(t.shape)} but {names[0]} has shape {list(x_g.shape)}")
        if t.device != x_g.device:
            raise ValueError(f"{name} is on {t.device} but {names[0]} is on {x_g.device}")
    batch = x_g.shape[0]
    sigma = _per_sample("sigma", sigma, batch, x_g, allow_scalar=True)
    if log_ratio is not None:
        log_ratio = _per_sample("log_ratio", log_ratio, batch, x_g, allow_scalar=False)
    return sigma, log_ratio


def accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs, fp64 if any input is fp64."""
    dt = torch.float32
    for t in tensors:
        if t is not None and torch.is_tensor(t) and t.dtype == torch.float64:
            dt = torch.float64
    return dt


# --------------------------------------------------------------------------------------------------------------------
# Coefficients (Python; divergences live here, never in kernels)
# --------------------------------------------------------------------------------------------------------------------


def score_distill_coefficients(
    sigma: torch.Tensor,
    log_ratio: torch.Tensor | None,
    *,
    divergence="rkl",
    weighting: Weighting = "sid",
    log_ratio_clamp: float = 10.0,
    lambda_g: float = 100.0,
    c_clip: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Coefficients:
    """Coefficients of the unified loss of MATH §5 for ``sigma [B]`` and ``log_ratio [B]`` (``None``: r = 1).

    With ``w_i`` the weighting, ``a = 2h/sigma^4``, ``b = g/sigma^4``, ``c = r (g' F + 2 h' S) / sigma^6``:
    ``kA = w a``, ``kB = w b``, ``kCF = w r g' / sigma^6``, ``kCS = 2 w r h' / sigma^6``. For ``"sid"``,
    ``w = lambda_g sigma^4 / (2 w_f)``: the ``sigma^4`` cancels analytically and ``1/w_f`` is applied in the core.
    """
    div = _div.get(divergence)
    sig = sigma.detach().to(dtype).clamp_min(SIGMA_FLOOR)
    if log_ratio is None:
        r = torch.ones_like(sig)
    else:
        r = log_ratio.detach().to(dtype).clamp(-log_ratio_clamp, log_ratio_clamp).exp()
    co = div.coefficients(r)
    inv_s2 = sig.pow(-2)
    if isinstance(weighting, str):
        if weighting == "sid":
            q, normalize = torch.full_like(sig, 0.5 * lambda_g), True  # q = w * sigma^-4 without the 1/w_f
        elif weighting == "none":
            q, normalize = inv_s2 * inv_s2, False
        else:
            raise ValueError(f"weighting must be 'sid', 'none' or a [B] tensor, got {weighting!r}")
    else:
        w = _per_sample("weighting", weighting, sig.shape[0], sigma, allow_scalar=True).detach().to(dtype)
        q, normalize = w * inv_s2 * inv_s2, False
    k = torch.stack([2 * co["h"] * q, co["g"] * q, torch.zeros_like(q), r * co["dg"] * q * inv_s2,
                     2 * r * co["dh"] * q * inv_s2])
    return Coefficients(k, normalize, float("inf") if c_clip is None else float(c_clip))


def _weight_row(weight, sigma: torch.Tensor, dtype) -> torch.Tensor:
    if torch.is_tensor(weight):
        return _per_sample("weight", weight, sigma.shape[0], sigma, allow_scalar=True).detach().to(dtype)
    return torch.full(sigma.shape, float(weight), dtype=dtype, device=sigma.device)


def preset_coefficients(
    form: str,
    sigma: torch.Tensor,
    log_ratio: torch.Tensor | None = None,
    *,
    alpha: float = 1.2,
    divergence="js",
    weight=1.0,
    ratio_clip: tuple[float, float] | None = (0.1, 20.0),
    log_ratio_clamp: float = 10.0,
    dtype: torch.dtype = torch.float32,
) -> Coefficients:
    """Coefficients of the earlier methods' generator losses (MATH §6) in the core's form.

    - ``di``: ``sum_pix sg(-delta) x_g`` (gradient ``-delta`` on ``x_g``; denoisers detached): ``kC0 = -1``.
    - ``dmd``: gradient ``-delta / w_f`` on ``x_g``: ``kC0 = -1``, normalised. (DMD2 writes the same gradient as
      ``0.5 ||x - sg(x - grad)||^2``; our value is the surrogate ``sum sg(grad) x``, the gradient is identical.)
    - ``sid``: ``(S + (1 - alpha) F) / w_f``, denoisers not detached: ``kA = 1, kB = 1 - alpha``, normalised.
    - ``fdistill``: gradient ``-h(r) delta / w_f`` with ``r`` clipped to ``ratio_clip`` and ``h`` divided by its batch
      mean (over finite entries).

    ``weight`` (scalar or ``[B]``) multiplies every row (``lambda_g`` for ``sid``).
    """
    sig = sigma.detach().to(dtype)
    w = _weight_row(weight, sig, dtype)
    zero = torch.zeros_like(w)
    if form == "di":
        rows, normalize = (zero, zero, -w, zero, zero), False
    elif form == "dmd":
        rows, normalize = (zero, zero, -w, zero, zero), True
    elif form == "sid":
        rows, normalize = (w, (1.0 - alpha) * w, zero, zero, zero), True
    elif form == "fdistill":
        if log_ratio is None:
            r = torch.ones_like(sig)
        else:
            r = log_ratio.detach().to(dtype).clamp(-log_ratio_clamp, log_ratio_clamp).exp()
        if ratio_clip is not None:
            r = r.clamp(ratio_clip[0], ratio_clip[1])
        h = _div.get(divergence).coefficients(r)["h"]
        finite = torch.isfinite(h)
        mean_h = torch.where(finite, h, 0).sum() / finite.sum().clamp_min(1)
        rows, normalize = (zero, zero, -w * h / mean_h.clamp_min(1e-12), zero, zero), True
    else:
        raise ValueError(f"unknown loss form {form!r}; known: di, dmd, sid, fdistill (and uni via score_distill_loss)")
    return Coefficients(torch.stack(rows), normalize)


# --------------------------------------------------------------------------------------------------------------------
# The core, reference implementation (autograd does the backward)
# --------------------------------------------------------------------------------------------------------------------


def score_distill_core_reference(
    x_g: torch.Tensor, d_teacher: torch.Tensor, d_fake: torch.Tensor, coeffs: Coefficients
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample core loss ``L_i`` (``[B]``, accumulation dtype) and the finite-sample mask ``[B]`` (bool).

    Written for clarity: float64-gradcheckable; the specification of every fused kernel.
    """
    batch = x_g.shape[0]
    acc = accumulation_dtype(x_g, d_teacher, d_fake, coeffs.k)
    x, dt, df = (t.reshape(batch, -1).to(acc) for t in (x_g, d_teacher, d_fake))
    k = coeffs.k.to(acc)
    d = x.shape[1]

    with torch.no_grad():  # which samples are finite (inputs, coefficients, and sums that could overflow)
        delta0 = dt - df
        sums = torch.stack([(delta0 * (df - x)).sum(1), (delta0 * delta0).sum(1), (delta0 * x).sum(1),
                            (x - dt).abs().sum(1)])
        valid = torch.isfinite(sums).all(0) & torch.isfinite(k).all(0)
    vrow = valid[:, None]
    x, dt, df = (torch.where(vrow, t, torch.zeros((), dtype=acc, device=t.device)) for t in (x, dt, df))
    k = torch.where(valid[None], k, torch.zeros((), dtype=acc, device=k.device))

    delta = dt - df
    e = df - x
    s_sum = (delta * e).sum(1)
    f_sum = (delta * delta).sum(1)
    p_sum = (delta.detach() * x).sum(1)
    if coeffs.normalize:
        inv = 1.0 / ((x - dt).abs().sum(1).detach() / d).clamp_min(WF_FLOOR)
    else:
        inv = torch.ones_like(s_sum)
    a = k[0] * inv
    b = k[1] * inv
    c = ((k[2] + k[3] * f_sum.detach() + k[4] * s_sum.detach()) * inv).clamp(-coeffs.c_clip, coeffs.c_clip)
    loss = a * s_sum + b * f_sum + c.detach() * p_sum
    return loss, valid


def reduce_per_sample(loss: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """``mean`` over finite samples, ``sum``, or ``none`` (``[B]``, zeros at excluded samples)."""
    if reduction == "mean":
        return loss.sum() / valid.sum().clamp_min(1).to(loss.dtype)
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _stats(valid: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"n_nonfinite": (~valid).sum(), "valid": valid}


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


# --------------------------------------------------------------------------------------------------------------------
# Public reference losses
# --------------------------------------------------------------------------------------------------------------------


def score_distill_loss(
    x_g: torch.Tensor,
    d_teacher: torch.Tensor,
    d_fake: torch.Tensor,
    sigma,
    log_ratio: torch.Tensor | None = None,
    *,
    divergence="rkl",
    weighting: Weighting = "sid",
    log_ratio_clamp: float = 10.0,
    reduction: str = "mean",
    lambda_g: float = 100.0,
    c_clip: float | None = None,
    return_stats: bool = False,
):
    """The unified Uni-Instruct generator loss of MATH §5 (pure-torch reference).

    Args:
        x_g: generator output ``[B, ...]`` (carries the gradient).
        d_teacher: teacher denoiser at ``x_t = x_g + sigma eps``, ``[B, ...]`` (gradient flows through its input).
        d_fake: fake-score denoiser at the same ``x_t``, ``[B, ...]``.
        sigma: ``[B]`` or a scalar noise level.
        log_ratio: ``[B]`` natural log of the density ratio ``p_t/q_t``; ``None`` means ``r = 1``.
        divergence: registry name (:mod:`fastui.divergences`) or a :class:`~fastui.divergences.Divergence`.
        weighting: ``"sid"`` (MATH §5 default, ``lambda_g sigma^4 / (2 w_f)``), ``"none"`` (``w = 1``: the gradient
            is an unbiased estimate of ``grad mean_i J_sigma_i``) or a ``[B]`` tensor used as given.
        log_ratio_clamp: ``|log r|`` is clamped to this before ``exp``.
        reduction: ``"mean"`` (over finite samples), ``"sum"`` or ``"none"``.
        lambda_g: scale of the ``"sid"`` weighting.
        c_clip: optional clip of ``|w_i c_i|``.
        return_stats: also return ``{"n_nonfinite": int64 tensor, "valid": [B] bool}``.

    Shapes:
        ``x_g, d_teacher, d_fake``: ``[B, ...]`` any float dtype; the loss is fp32 (fp64 for fp64 inputs).

    Returns:
        The loss (a scalar, or ``[B]`` for ``reduction="none"``), and the stats dict if asked.
    """
    return uni_loss_with(score_distill_core_reference, x_g, d_teacher, d_fake, sigma, log_ratio,
                         divergence=divergence, weighting=weighting, log_ratio_clamp=log_ratio_clamp,
                         reduction=reduction, lambda_g=lambda_g, c_clip=c_clip, return_stats=return_stats)


# The plumbing shared with the fused twins in fastui.ops: validation, coefficients, reduction, around a core
# ``core(x_g, d_teacher, d_fake, coeffs) -> (loss [B], valid [B])`` (the reference here, a dispatched op there).
CoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Coefficients], tuple]


def _finish(loss: torch.Tensor, valid: torch.Tensor, reduction: str, return_stats: bool):
    out = reduce_per_sample(loss, valid, reduction)
    return (out, _stats(valid)) if return_stats else out


def uni_loss_with(core: CoreFn, x_g, d_teacher, d_fake, sigma, log_ratio=None, *, divergence="rkl",
                  weighting: Weighting = "sid", log_ratio_clamp: float = 10.0, reduction: str = "mean",
                  lambda_g: float = 100.0, c_clip: float | None = None, return_stats: bool = False):
    """:func:`score_distill_loss` around the per-sample ``core`` (arguments as there)."""
    sigma, log_ratio = check_inputs(x_g, d_teacher, d_fake, sigma, log_ratio)
    _check_reduction(reduction)
    coeffs = score_distill_coefficients(
        sigma, log_ratio, divergence=divergence, weighting=weighting, log_ratio_clamp=log_ratio_clamp,
        lambda_g=lambda_g, c_clip=c_clip, dtype=accumulation_dtype(x_g, d_teacher, d_fake, sigma),
    )
    return _finish(*core(x_g, d_teacher, d_fake, coeffs), reduction, return_stats)


def form_loss_with(core: CoreFn, form: str, x_g, d_teacher, d_fake, log_ratio, reduction: str, return_stats: bool,
                   **kw):
    """The loss of a preset form (``di, dmd, sid, fdistill``) around ``core``; ``kw``: :func:`preset_coefficients`."""
    sigma, log_ratio = check_inputs(x_g, d_teacher, d_fake, 1.0, log_ratio)
    _check_reduction(reduction)
    coeffs = preset_coefficients(form, sigma, log_ratio, dtype=accumulation_dtype(x_g, d_teacher, d_fake), **kw)
    return _finish(*core(x_g, d_teacher, d_fake, coeffs), reduction, return_stats)


def preset_loss_with(core: CoreFn, method, x_g, d_teacher, d_fake, sigma, log_ratio=None, *, divergence=None,
                     lambda_g: float = 100.0, reduction: str = "mean", return_stats: bool = False, **overrides):
    """:func:`preset_loss` around ``core`` (arguments as there)."""
    check_inputs(x_g, d_teacher, d_fake, sigma, log_ratio)  # same errors for every method, used or not
    p = method if isinstance(method, _div.Preset) else _div.get_preset(method)
    div = divergence or p.divergence
    scale = p.distill_weight
    common = {"reduction": reduction, "return_stats": return_stats}
    if p.form == "uni":
        return uni_loss_with(core, x_g, d_teacher, d_fake, sigma, log_ratio, divergence=div, weighting="sid",
                             lambda_g=lambda_g * scale, **common, **overrides)
    if p.form == "sid":
        return form_loss_with(core, "sid", x_g, d_teacher, d_fake, None, weight=lambda_g * scale,
                              alpha=overrides.get("alpha", p.alpha), **common)
    if p.form == "fdistill":
        return form_loss_with(core, "fdistill", x_g, d_teacher, d_fake, log_ratio, weight=scale, divergence=div,
                              ratio_clip=overrides.get("ratio_clip", p.ratio_clip), log_ratio_clamp=10.0, **common)
    return form_loss_with(core, p.form, x_g, d_teacher, d_fake, None, weight=scale, **common)


def di_loss(x_g, d_teacher, d_fake, *, weight=1.0, reduction="mean", return_stats=False):
    """Diff-Instruct: per sample ``sum_pix sg(-(D_teacher - D_fake)) x_g`` (denoisers detached)."""
    return form_loss_with(score_distill_core_reference, "di", x_g, d_teacher, d_fake, None, reduction, return_stats,
                          weight=weight)


def dmd_loss(x_g, d_teacher, d_fake, *, weight=1.0, reduction="mean", return_stats=False):
    """DMD: gradient ``-(D_teacher - D_fake) / w_f`` on ``x_g`` per sample (denoisers detached)."""
    return form_loss_with(score_distill_core_reference, "dmd", x_g, d_teacher, d_fake, None, reduction, return_stats,
                          weight=weight)


def sid_loss(x_g, d_teacher, d_fake, *, alpha=1.2, weight=100.0, reduction="mean", return_stats=False):
    """SiD(alpha): ``weight * (S + (1 - alpha) F) / w_f`` per sample, denoisers NOT detached (alpha = 1: SIM)."""
    return form_loss_with(score_distill_core_reference, "sid", x_g, d_teacher, d_fake, None, reduction, return_stats,
                          weight=weight, alpha=alpha)


def fdistill_loss(x_g, d_teacher, d_fake, log_ratio, *, divergence="js", ratio_clip=(0.1, 20.0), weight=1.0,
                  log_ratio_clamp=10.0, reduction="mean", return_stats=False):
    """f-distill: gradient ``-h~(r) (D_teacher - D_fake) / w_f`` on ``x_g``; ``h~ = h / mean_batch(h)``, r clipped."""
    return form_loss_with(score_distill_core_reference, "fdistill", x_g, d_teacher, d_fake, log_ratio, reduction,
                          return_stats, weight=weight, divergence=divergence, ratio_clip=ratio_clip,
                          log_ratio_clamp=log_ratio_clamp)


def preset_loss(method, x_g, d_teacher, d_fake, sigma, log_ratio=None, *, divergence=None, lambda_g=100.0,
                reduction="mean", return_stats=False, **overrides):
    """The generator distillation loss of a method preset (MATH §6), GAN term excluded.

    Args:
        method: preset name (``di, dmd, dmd2, sid, sim, sida, fdistill, uni``) or a :class:`Preset`.
        divergence: overrides the preset's divergence (``uni``, ``fdistill``).
        lambda_g: scale of the SiD-family losses (``sid``, ``sim``, ``sida``, ``uni``).
        overrides: e.g. ``alpha=`` for ``sid``.
    """
    return preset_loss_with(score_distill_core_reference, method, x_g, d_teacher, d_fake, sigma, log_ratio,
                            divergence=divergence, lambda_g=lambda_g, reduction=reduction, return_stats=return_stats,
                            **overrides)


# --------------------------------------------------------------------------------------------------------------------
# Fake score, discriminator, ratio, GAN
# --------------------------------------------------------------------------------------------------------------------


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` (fp32 or better, sigma floored)."""
    s = sigma.to(accumulation_dtype(sigma)).clamp_min(SIGMA_FLOOR)
    return (s * s + sigma_data**2) / (s * sigma_data) ** 2


def dmd_normalizer(x_g: torch.Tensor, d_teacher: torch.Tensor) -> torch.Tensor:
    """``w_f = max(mean_pix |x_g - D_teacher|, 1e-5)`` per sample, detached, fp32 or better."""
    acc = accumulation_dtype(x_g, d_teacher)
    diff = (x_g.detach().to(acc) - d_teacher.detach().to(acc)).reshape(x_g.shape[0], -1)
    return diff.abs().mean(1).clamp_min(WF_FLOOR)


def fake_score_loss(d_fake, x_g, sigma, *, sigma_data=0.5, reduction="mean", return_stats=False):
    """Denoising score matching of the fake score on generator samples (MATH §3).

    ``L_i = lambda(sigma_i) sum_pix (D_fake(x_g + sigma n) - x_g)^2`` with ``x_g`` detached. Non-finite samples are
    excluded and counted like in :func:`score_distill_loss`.

    Shapes: ``d_fake, x_g``: ``[B, ...]``; ``sigma``: ``[B]`` or scalar.
    """
    sigma, _ = check_inputs(x_g, d_fake, d_fake, sigma, names=("x_g", "d_fake", "d_fake"))
    _check_reduction(reduction)
    batch = x_g.shape[0]
    acc = accumulation_dtype(d_fake, x_g)
    diff = d_fake.reshape(batch, -1).to(acc) - x_g.detach().reshape(batch, -1).to(acc)
    valid = torch.isfinite(diff).all(1) & torch.isfinite(sigma)
    diff = torch.where(valid[:, None], diff, torch.zeros((), dtype=acc, device=diff.device))
    lam = torch.where(valid, edm_loss_weight(torch.where(valid, sigma, 1.0), sigma_data).to(acc), 0.0)
    loss = lam * (diff * diff).sum(1)
    out = reduce_per_sample(loss, valid, reduction)
    return (out, _stats(valid)) if return_stats else out


def _per_sample_logits(logits: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions (patch logits -> one logit per sample), fp32 or better."""
    if logits.ndim == 0:
        raise ValueError("logits must have a batch dimension, got a scalar")
    return logits.reshape(logits.shape[0], -1).to(accumulation_dtype(logits)).mean(1)


def discriminator_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """``mean_i softplus(l_fake_i) + softplus(-l_real_i)`` with per-sample patch-mean logits (MATH §3)."""
    lf, lr = _per_sample_logits(logits_fake), _per_sample_logits(logits_real)
    return F.softplus(lf).mean() + F.softplus(-lr).mean()


def log_density_ratio(
    logits: torch.Tensor,
    *,
    clamp: float = 10.0,
    clip: tuple[float, float] | None = None,
    self_normalize: bool = False,
    all_reduce: bool = False,
    process_group=None,
) -> torch.Tensor:
    """``log r`` per sample from discriminator logits: ``r = exp(clamp(mean_patch(l), -L, L))``, optionally clipped
    to ``[r_min, r_max]`` and self-normalised over the batch (all-reduced over ``process_group`` if ``all_reduce``).
    Always detached.

    Returns:
        ``[B]`` natural log of the density ratio.
    """
    lr = _per_sample_logits(logits.detach()).clamp(-clamp, clamp)
    if clip is not None:
        lr = lr.clamp(math.log(clip[0]), math.log(clip[1]))
    if self_normalize:
        r = lr.exp()
        total = torch.stack([r.sum(), torch.tensor(float(r.numel()), dtype=r.dtype, device=r.device)])
        if all_reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total, group=process_group)  # [sum r, count] over ranks
        lr = lr - torch.log(total[0] / total[1])
    return lr


def gan_generator_loss(logits: torch.Tensor, x_g: torch.Tensor | None = None,
                       d_teacher: torch.Tensor | None = None, *, weight: float = 0.01) -> torch.Tensor:
    """Non-saturating GAN generator term ``weight * softplus(-l(x_t))`` (per-sample patch-mean logits).

    If ``x_g`` and ``d_teacher`` are given, each sample is scaled by ``d / w_f`` as in SiDA (``d = C*H*W``).
    """
    per = F.softplus(-_per_sample_logits(logits))
    if x_g is not None and d_teacher is not None:
        d = x_g[0].numel()
        per = per * (d / dmd_normalizer(x_g, d_teacher)).to(per.dtype)
    return weight * per.mean()
