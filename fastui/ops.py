"""Dispatched, fused versions of the reference losses (the ops layer of DESIGN.md).

Ladder (STYLE.md 1): backend kernel -> backend ``core_forward`` (host launcher) -> the custom op
``fastui::score_distill_core`` (``torch.library``: a fake implementation for ``torch.compile`` and a registered
autograd formula, which torch turns into an ``autograd.Function``) -> :func:`score_distill_loss` and
:class:`fastui.losses.ScoreDistillLoss`.

The op computes the per-sample loss AND the three input gradients in its forward (one reduction sweep, one
elementwise sweep); backward only scales the stored gradients by ``grad_output``. Inputs are validated once here
(:func:`fastui.functional.check_inputs`, the same errors for every backend), unified to one dtype (gradients still come
back in each input's own dtype through autograd's casts), flattened to ``[B, d]`` and copied only when not contiguous.
The backend is chosen inside the op at run time (:mod:`fastui.backends`), so a compiled graph has no break.

Example:
    >>> import torch, fastui
    >>> x = torch.randn(4, 3, 8, 8, requires_grad=True)
    >>> dt, df = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    >>> fastui.score_distill_loss(x, dt, df, sigma=0.5, divergence="fkl", log_ratio=torch.zeros(4)).backward()
"""

from __future__ import annotations

import functools

import torch

from . import backends as _backends
from . import functional as _F
from .functional import Coefficients, Weighting

__all__ = [
    "di_loss",
    "dmd_loss",
    "dsm_core",
    "fake_score_loss",
    "fdistill_loss",
    "preset_loss",
    "score_distill_core",
    "score_distill_loss",
    "sid_loss",
]

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile; the backend is chosen when they run)
# --------------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("fastui::score_distill_core", mutates_args=())
def _core_op(x: Tensor, dt: Tensor, df: Tensor, k: Tensor, normalize: bool, c_clip: float, need_grads: bool,
             backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    mod = _backends.select(x, dt, df, backend or None)
    loss, valid, gx, gdt, gdf = mod.core_forward(x, dt, df, k, normalize, c_clip, need_grads)
    if not need_grads:  # custom ops cannot return None: empty placeholders (the fake implementation agrees)
        gx, gdt, gdf = x.new_empty(0), x.new_empty(0), x.new_empty(0)
    return loss, valid, gx, gdt, gdf


@_core_op.register_fake
def _core_fake(x, dt, df, k, normalize, c_clip, need_grads, backend):
    batch = x.shape[0]
    loss = x.new_empty(batch, dtype=_F.accumulation_dtype(x))
    valid = x.new_empty(batch, dtype=torch.bool)
    if need_grads:
        return loss, valid, torch.empty_like(x), torch.empty_like(dt), torch.empty_like(df)
    return loss, valid, x.new_empty(0), x.new_empty(0), x.new_empty(0)


def _core_setup(ctx, inputs, output):
    _, _, gx, gdt, gdf = output
    ctx.save_for_backward(gx, gdt, gdf)


def _scaled(grad: Tensor, g_loss: Tensor) -> Tensor:
    """``g_loss[i] * grad[i]``, computed in fp32 (or better) and returned in ``grad``'s dtype."""
    return (grad * g_loss[:, None]).to(grad.dtype)


def _core_backward(ctx, g_loss, g_valid, g_gx, g_gdt, g_gdf):
    gx, gdt, gdf = ctx.saved_tensors
    if g_loss is None:
        return None, None, None, None, None, None, None, None
    return _scaled(gx, g_loss), _scaled(gdt, g_loss), _scaled(gdf, g_loss), None, None, None, None, None


_core_op.register_autograd(_core_backward, setup_context=_core_setup)


@torch.library.custom_op("fastui::dsm_core", mutates_args=())
def _dsm_op(d_fake: Tensor, x_g: Tensor, lam: Tensor, need_grads: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    mod = _backends.select(d_fake, x_g, x_g, backend or None)
    loss, valid, g = mod.dsm_forward(d_fake, x_g, lam, need_grads)
    return loss, valid, (g if need_grads else d_fake.new_empty(0))


@_dsm_op.register_fake
def _dsm_fake(d_fake, x_g, lam, need_grads, backend):
    batch = d_fake.shape[0]
    loss = d_fake.new_empty(batch, dtype=_F.accumulation_dtype(d_fake))
    g = torch.empty_like(d_fake) if need_grads else d_fake.new_empty(0)
    return loss, d_fake.new_empty(batch, dtype=torch.bool), g


def _dsm_setup(ctx, inputs, output):
    ctx.save_for_backward(output[2])


def _dsm_backward(ctx, g_loss, g_valid, g_g):
    (g,) = ctx.saved_tensors
    return (None if g_loss is None else _scaled(g, g_loss)), None, None, None, None


_dsm_op.register_autograd(_dsm_backward, setup_context=_dsm_setup)


# --------------------------------------------------------------------------------------------------------------------
# Host side: dtype unification, flattening, the core
# --------------------------------------------------------------------------------------------------------------------


def _flatten(tensors: tuple[Tensor, ...]) -> list[Tensor]:
    """One common dtype, ``[B, d]``, contiguous; each step is a no-op (no copy) when already satisfied."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    batch = tensors[0].shape[0]
    return [t.to(dtype).reshape(batch, -1).contiguous() for t in tensors]


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def score_distill_core(x_g: Tensor, d_teacher: Tensor, d_fake: Tensor, coeffs: Coefficients,
                       backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Dispatched twin of :func:`fastui.functional.score_distill_core_reference` (inputs already validated).

    Args:
        x_g, d_teacher, d_fake: ``[B, ...]`` of one shape, any float dtypes (unified to their promoted dtype).
        coeffs: the core's coefficients (:func:`fastui.functional.score_distill_coefficients` or
            :func:`fastui.functional.preset_coefficients`).
        backend: explicit backend name; ``None`` uses ``FASTUI_BACKEND`` or the automatic choice.

    Returns:
        ``(loss [B], valid [B] bool)``; the loss is fp32 (fp64 for fp64 inputs) and differentiable w.r.t. the
        three inputs.
    """
    x, dt, df = _flatten((x_g, d_teacher, d_fake))
    acc = _F.accumulation_dtype(x)
    k = coeffs.k.detach().to(device=x.device, dtype=acc).contiguous()
    loss, valid, _, _, _ = _core_op(x, dt, df, k, bool(coeffs.normalize), float(coeffs.c_clip),
                                    _needs_grad(x_g, d_teacher, d_fake), backend or "")
    return loss, valid


def dsm_core(d_fake: Tensor, x_g: Tensor, lam: Tensor, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Dispatched per-sample DSM loss ``lam_i sum (d_fake - x_g)^2`` (``x_g`` detached) and the finite mask."""
    df, x = _flatten((d_fake, x_g.detach()))
    lam = lam.detach().to(device=df.device, dtype=_F.accumulation_dtype(df)).reshape(-1).contiguous()
    loss, valid, _ = _dsm_op(df, x, lam, _needs_grad(d_fake), backend or "")
    return loss, valid


# --------------------------------------------------------------------------------------------------------------------
# Public losses (same signatures as fastui.functional, plus ``backend=``)
# --------------------------------------------------------------------------------------------------------------------


def score_distill_loss(
    x_g: Tensor,
    d_teacher: Tensor,
    d_fake: Tensor,
    sigma,
    log_ratio: Tensor | None = None,
    *,
    divergence="rkl",
    weighting: Weighting = "sid",
    log_ratio_clamp: float = 10.0,
    reduction: str = "mean",
    lambda_g: float = 100.0,
    c_clip: float | None = None,
    return_stats: bool = False,
    backend: str | None = None,
):
    """The unified Uni-Instruct generator loss of MATH §5, fused and dispatched.

    Same arguments, values and gradients as :func:`fastui.functional.score_distill_loss` (the reference); works
    under ``torch.compile(fullgraph=True)``.

    Args:
        x_g: generator output ``[B, ...]`` (carries the gradient).
        d_teacher: teacher denoiser at ``x_t = x_g + sigma eps``, ``[B, ...]`` (gradient flows through its input).
        d_fake: fake-score denoiser at the same ``x_t``, ``[B, ...]``.
        sigma: ``[B]`` or a scalar noise level.
        log_ratio: ``[B]`` natural log of the density ratio ``p_t/q_t``; ``None`` means ``r = 1``.
        divergence: registry name (:mod:`fastui.divergences`) or a :class:`~fastui.divergences.Divergence`.
        weighting: ``"sid"`` (default, ``lambda_g sigma^4 / (2 w_f)``), ``"none"`` or a ``[B]`` tensor.
        log_ratio_clamp: ``|log r|`` is clamped to this before ``exp``.
        reduction: ``"mean"`` (over finite samples), ``"sum"`` or ``"none"``.
        lambda_g: scale of the ``"sid"`` weighting.
        c_clip: optional clip of ``|w_i c_i|``.
        return_stats: also return ``{"n_nonfinite": int64 tensor, "valid": [B] bool}``.
        backend: ``"torch" | "cpp" | "triton" | "cuda"``; ``None``: ``FASTUI_BACKEND`` or the automatic choice.

    Shapes:
        ``x_g, d_teacher, d_fake``: ``[B, ...]``, fp32/bf16/fp16 (fp64: torch backend). Gradients come back in each
        input's dtype; the loss is fp32 (fp64 for fp64 inputs).

    Returns:
        The loss (a scalar, or ``[B]`` for ``reduction="none"``), and the stats dict if asked.
    """
    return _F.uni_loss_with(_core(backend), x_g, d_teacher, d_fake, sigma, log_ratio, divergence=divergence,
                            weighting=weighting, log_ratio_clamp=log_ratio_clamp, reduction=reduction,
                            lambda_g=lambda_g, c_clip=c_clip, return_stats=return_stats)


def _core(backend: str | None) -> _F.CoreFn:
    return functools.partial(score_distill_core, backend=backend)


def di_loss(x_g, d_teacher, d_fake, *, weight=1.0, reduction="mean", return_stats=False, backend=None):
    """Diff-Instruct (fused twin of :func:`fastui.functional.di_loss`)."""
    return _F.form_loss_with(_core(backend), "di", x_g, d_teacher, d_fake, None, reduction, return_stats,
                             weight=weight)


def dmd_loss(x_g, d_teacher, d_fake, *, weight=1.0, reduction="mean", return_stats=False, backend=None):
    """DMD (fused twin of :func:`fastui.functional.dmd_loss`)."""
    return _F.form_loss_with(_core(backend), "dmd", x_g, d_teacher, d_fake, None, reduction, return_stats,
                             weight=weight)


def sid_loss(x_g, d_teacher, d_fake, *, alpha=1.2, weight=100.0, reduction="mean", return_stats=False, backend=None):
    """SiD(alpha) (fused twin of :func:`fastui.functional.sid_loss`)."""
    return _F.form_loss_with(_core(backend), "sid", x_g, d_teacher, d_fake, None, reduction, return_stats,
                             weight=weight, alpha=alpha)


def fdistill_loss(x_g, d_teacher, d_fake, log_ratio, *, divergence="js", ratio_clip=(0.1, 20.0), weight=1.0,
                  log_ratio_clamp=10.0, reduction="mean", return_stats=False, backend=None):
    """f-distill (fused twin of :func:`fastui.functional.fdistill_loss`)."""
    return _F.form_loss_with(_core(backend), "fdistill", x_g, d_teacher, d_fake, log_ratio, reduction, return_stats,
                             weight=weight, divergence=divergence, ratio_clip=ratio_clip,
                             log_ratio_clamp=log_ratio_clamp)


def preset_loss(method, x_g, d_teacher, d_fake, sigma, log_ratio=None, *, divergence=None, lambda_g=100.0,
                reduction="mean", return_stats=False, backend=None, **overrides):
    """The generator loss of a method preset (fused twin of :func:`fastui.functional.preset_loss`, GAN excluded).

    Args:
        method: preset name (``di, dmd, dmd2, sid, sim, sida, fdistill, uni``) or a :class:`Preset`.
        divergence: overrides the preset's divergence (``uni``, ``fdistill``).
        lambda_g: scale of the SiD-family losses.
        backend: explicit backend name, or ``None``.
        overrides: e.g. ``alpha=`` for ``sid``, ``ratio_clip=`` for ``fdistill``.
    """
    return _F.preset_loss_with(_core(backend), method, x_g, d_teacher, d_fake, sigma, log_ratio,
                               divergence=divergence, lambda_g=lambda_g, reduction=reduction,
                               return_stats=return_stats, **overrides)


def fake_score_loss(d_fake, x_g, sigma, *, sigma_data=0.5, reduction="mean", return_stats=False, backend=None):
    """Fake-score DSM loss of MATH §3, fused (twin of :func:`fastui.functional.fake_score_loss`).

    ``L_i = lambda(sigma_i) sum_pix (d_fake - x_g)^2`` with ``x_g`` detached; non-finite samples are excluded.

    Shapes: ``d_fake, x_g``: ``[B, ...]``; ``sigma``: ``[B]`` or scalar.
    """
    sigma, _ = _F.check_inputs(x_g, d_fake, d_fake, sigma, names=("x_g", "d_fake", "d_fake"))
    _F._check_reduction(reduction)
    lam = _F.edm_loss_weight(sigma, sigma_data)  # NaN sigma -> NaN lam -> the backend excludes the sample
    loss, valid = dsm_core(d_fake, x_g, lam, backend)
    return _F._finish(loss, valid, reduction, return_stats)
