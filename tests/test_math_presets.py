"""Every method preset produces its documented per-pixel gradients (MATH §5, §6), and the §6 identities hold.

Expected values are written out here from the formulas of MATH.md, independently of :mod:`fastui.functional`.
"""

from __future__ import annotations

import pytest
import torch

from fastui import divergences as D
from fastui import functional as FF

F64 = torch.float64
LAMBDA_G = 100.0

# independent (h, h', g, g') of a few divergences, from MATH §4
DIV_TABLE = {
    "rkl": lambda r: (torch.ones_like(r), torch.zeros_like(r), torch.ones_like(r), torch.zeros_like(r)),
    "fkl": lambda r: (r, torch.ones_like(r), torch.zeros_like(r), torch.zeros_like(r)),
    "jeffreys": lambda r: (1 + r, torch.ones_like(r), torch.ones_like(r), torch.zeros_like(r)),
    "js": lambda r: (r / (1 + r), (1 + r) ** -2, r**2 / (1 + r) ** 2, 2 * r / (1 + r) ** 3),
}


def make_inputs(seed=0, batch=5, shape=(3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    x_g = torch.randn(batch, *shape, generator=g, dtype=F64)
    d_teacher = x_g + 0.3 * torch.randn(batch, *shape, generator=g, dtype=F64)
    d_fake = x_g + 0.3 * torch.randn(batch, *shape, generator=g, dtype=F64)
    sigma = torch.exp(torch.randn(batch, generator=g, dtype=F64))
    log_ratio = torch.randn(batch, generator=g, dtype=F64)
    return x_g, d_teacher, d_fake, sigma, log_ratio


def autograd_per_pixel(loss_fn, x_g, d_teacher, d_fake):
    """Per-sample losses ``[B]`` and ``d sum_i L_i / d (x_g, d_teacher, d_fake)`` (rows are per-sample gradients)."""
    ins = [t.clone().requires_grad_(True) for t in (x_g, d_teacher, d_fake)]
    loss = loss_fn(*ins)
    grads = torch.autograd.grad(loss.sum(), ins, allow_unused=True)
    return loss.detach(), [torch.zeros_like(t) if gr is None else gr for t, gr in zip(ins, grads)]


def parts(x_g, d_teacher, d_fake):
    """delta, e, S, F, P, 1/w_f per sample (MATH §5), broadcastable to the pixel shape."""
    batch = x_g.shape[0]
    delta, e = d_teacher - d_fake, d_fake - x_g
    flat = lambda t: t.reshape(batch, -1)
    S, Fn, P = (flat(delta * e).sum(1), flat(delta * delta).sum(1), flat(delta * x_g).sum(1))
    inv = 1.0 / flat((x_g - d_teacher).abs()).mean(1).clamp_min(1e-5)
    return delta, e, S, Fn, P, inv


def col(v, like):
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def expected_core(x_g, d_teacher, d_fake, a, b, c):
    """Documented per-pixel gradients of ``L = a S + b F + sg(c) P`` with ``a, b, c`` per sample (already scaled)."""
    delta, e, S, Fn, P, _ = parts(x_g, d_teacher, d_fake)
    a_, b_, c_ = (col(t, x_g) for t in (a, b, c))
    loss = a * S + b * Fn + c * P
    return loss, [(c_ - a_) * delta, a_ * e + 2 * b_ * delta, a_ * (delta - e) - 2 * b_ * delta]


def expected_preset(name, x_g, d_teacher, d_fake, sigma, log_ratio, divergence=None):
    """(a, b, c) per sample of each preset, from the MATH §6 table; lambda_g = 100."""
    p = D.get_preset(name)
    _delta, _e, S, Fn, _P, inv = parts(x_g, d_teacher, d_fake)
    zero = torch.zeros_like(S)
    if p.form == "di":  # gradient -delta on x_g, denoisers detached
        return zero, zero, -torch.ones_like(S) * p.distill_weight
    if p.form == "dmd":  # gradient -delta / w_f
        return zero, zero, -inv * p.distill_weight
    if p.form == "sid":  # lambda (S + (1 - alpha) F) / w_f
        lam = LAMBDA_G * p.distill_weight
        return lam * inv, lam * (1 - p.alpha) * inv, zero
    r = log_ratio.clamp(-10, 10).exp()
    div = divergence or p.divergence
    if p.form == "fdistill":  # gradient -h(r) delta / w_f with h normalised by its batch mean, r clipped to [0.1, 20]
        h = DIV_TABLE[div](r.clamp(0.1, 20.0))[0]
        return zero, zero, -(h / h.mean()) * inv * p.distill_weight
    # uni: w = lambda sigma^4 / (2 w_f); a = 2 w h / sigma^4, b = w g / sigma^4, c = w r (g'F + 2h'S) / sigma^6
    assert p.form == "uni"
    h, dh, g, dg = DIV_TABLE[div](r)
    w = LAMBDA_G * p.distill_weight * sigma**4 * inv / 2
    return 2 * w * h / sigma**4, w * g / sigma**4, w * r * (dg * Fn + 2 * dh * S) / sigma**6


@pytest.mark.parametrize("name", sorted(D.PRESETS))
def test_preset_loss_has_documented_gradient(name):
    x_g, d_teacher, d_fake, sigma, log_ratio = make_inputs()
    loss, grads = autograd_per_pixel(
        lambda x, dt, df: FF.preset_loss(name, x, dt, df, sigma, log_ratio, lambda_g=LAMBDA_G, reduction="none"),
        x_g, d_teacher, d_fake)
    want_loss, want_grads = expected_core(x_g, d_teacher, d_fake,
                                          *expected_preset(name, x_g, d_teacher, d_fake, sigma, log_ratio))
    torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-10)
    for got, want, arg in zip(grads, want_grads, ("x_g", "d_teacher", "d_fake")):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=f"{name}: gradient w.r.t. {arg}")


@pytest.mark.parametrize("divergence", sorted(DIV_TABLE))
@pytest.mark.parametrize("name", ["uni", "fdistill"])
def test_preset_divergence_override_has_documented_gradient(name, divergence):
    x_g, d_teacher, d_fake, sigma, log_ratio = make_inputs(seed=1)
    loss, grads = autograd_per_pixel(
        lambda x, dt, df: FF.preset_loss(name, x, dt, df, sigma, log_ratio, divergence=divergence,
                                         lambda_g=LAMBDA_G, reduction="none"),
        x_g, d_teacher, d_fake)
    abc = expected_preset(name, x_g, d_teacher, d_fake, sigma, log_ratio, divergence=divergence)
    want_loss, want_grads = expected_core(x_g, d_teacher, d_fake, *abc)
    torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_named_method_losses_have_documented_gradients():
    """di_loss, dmd_loss, sid_loss(alpha), fdistill_loss: the MATH §6 gradients on x_g (denoisers detached or not)."""
    x_g, d_teacher, d_fake, _sigma, log_ratio = make_inputs(seed=2)
    _delta, _e, S, _Fn, _P, inv = parts(x_g, d_teacher, d_fake)
    one, zero = torch.ones_like(S), torch.zeros_like(S)
    r = log_ratio.exp().clamp(0.1, 20.0)
    h_js = r / (1 + r)
    cases = {
        "di": (lambda x, dt, df: FF.di_loss(x, dt, df, reduction="none"), (zero, zero, -one)),
        "dmd": (lambda x, dt, df: FF.dmd_loss(x, dt, df, reduction="none"), (zero, zero, -inv)),
        "sid0.7": (lambda x, dt, df: FF.sid_loss(x, dt, df, alpha=0.7, weight=3.0, reduction="none"),
                   (3.0 * inv, 3.0 * 0.3 * inv, zero)),
        "fdistill": (lambda x, dt, df: FF.fdistill_loss(x, dt, df, log_ratio, reduction="none"),
                     (zero, zero, -h_js / h_js.mean() * inv)),
    }
    for key, (fn, abc) in cases.items():
        loss, grads = autograd_per_pixel(fn, x_g, d_teacher, d_fake)
        want_loss, want_grads = expected_core(x_g, d_teacher, d_fake, *abc)
        torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-10, msg=key)
        for got, want in zip(grads, want_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=key)


def test_dmd_gradient_equals_dmd2_squared_error_form():
    """DMD2 writes the loss as ``0.5 sum_pix (x - sg(x - grad))^2`` with ``grad = -delta / w_f``; fastui's surrogate
    ``sum_pix sg(grad) x`` has the identical gradient (MATH §6)."""
    x_g, d_teacher, d_fake, _, _ = make_inputs(seed=3)
    _, (gx, _, _) = autograd_per_pixel(lambda x, dt, df: FF.dmd_loss(x, dt, df, reduction="none"),
                                       x_g, d_teacher, d_fake)
    x = x_g.clone().requires_grad_(True)
    wf = (x_g - d_teacher).abs().reshape(x_g.shape[0], -1).mean(1)
    grad_dmd = -(d_teacher - d_fake) / col(wf, x_g)
    (0.5 * ((x - (x - grad_dmd).detach()) ** 2).sum()).backward()
    torch.testing.assert_close(gx, x.grad, rtol=1e-12, atol=1e-12)


def test_uni_rkl_equals_sid_alpha_half():
    """MATH §6: uni(rkl) with the default (sid) weighting is exactly sid(alpha=0.5): values and all gradients."""
    x_g, d_teacher, d_fake, sigma, log_ratio = make_inputs(seed=4)
    uni = autograd_per_pixel(
        lambda x, dt, df: FF.score_distill_loss(x, dt, df, sigma, log_ratio, divergence="rkl", weighting="sid",
                                                lambda_g=LAMBDA_G, reduction="none"), x_g, d_teacher, d_fake)
    sid = autograd_per_pixel(
        lambda x, dt, df: FF.sid_loss(x, dt, df, alpha=0.5, weight=LAMBDA_G, reduction="none"),
        x_g, d_teacher, d_fake)
    torch.testing.assert_close(uni[0], sid[0], rtol=1e-13, atol=1e-13)
    for a, b in zip(uni[1], sid[1]):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    via_presets = [FF.preset_loss("uni", x_g, d_teacher, d_fake, sigma, log_ratio, divergence="rkl"),
                   FF.preset_loss("sid", x_g, d_teacher, d_fake, sigma, alpha=0.5)]
    torch.testing.assert_close(via_presets[0], via_presets[1], rtol=1e-13, atol=1e-13)


def test_sim_and_sida_are_sid_alpha_one():
    x_g, d_teacher, d_fake, sigma, _ = make_inputs(seed=5)
    sid1 = FF.sid_loss(x_g, d_teacher, d_fake, alpha=1.0, weight=LAMBDA_G, reduction="none")
    torch.testing.assert_close(FF.preset_loss("sim", x_g, d_teacher, d_fake, sigma, reduction="none"), sid1)
    torch.testing.assert_close(FF.preset_loss("sida", x_g, d_teacher, d_fake, sigma, reduction="none"), 0.5 * sid1)
