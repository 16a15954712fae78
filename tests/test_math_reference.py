"""The reference losses are differentiable (float64 gradcheck), exclude non-finite samples exactly, and reject bad
inputs with a ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch

from fastui import functional as FF

F64 = torch.float64


def make_inputs(batch=4, shape=(2, 3, 3), seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x_g = torch.randn(batch, *shape, generator=g, dtype=dtype)
    d_teacher = x_g + 0.5 * torch.randn(batch, *shape, generator=g, dtype=dtype)
    d_fake = x_g + 0.5 * torch.randn(batch, *shape, generator=g, dtype=dtype)
    sigma = torch.exp(torch.randn(batch, generator=g, dtype=dtype))
    log_ratio = torch.randn(batch, generator=g, dtype=dtype)
    return x_g, d_teacher, d_fake, sigma, log_ratio


# ------------------------------------------------------------------------------------------------------------------
# gradcheck
# ------------------------------------------------------------------------------------------------------------------


# The surrogate parts of the core are not derivatives of its value (c, 1/w_f and the P term's delta are detached on
# purpose; their per-pixel gradients are checked against MATH's formulas in test_math_presets.py). gradcheck the parts
# that are genuine functions: a S + b F with fixed coefficients, and the losses whose coefficients do not move.


def test_core_reference_sf_terms_pass_gradcheck():
    x_g, d_teacher, d_fake, _, _ = make_inputs()
    k = torch.randn(5, x_g.shape[0], generator=torch.Generator().manual_seed(1), dtype=F64)
    k[2:] = 0  # no c term
    co = FF.Coefficients(k, normalize=False)
    ins = tuple(t.clone().requires_grad_(True) for t in (x_g, d_teacher, d_fake))
    assert torch.autograd.gradcheck(lambda *t: FF.score_distill_core_reference(*t, co)[0], ins)


def test_core_reference_p_term_passes_gradcheck_in_x_g():
    """With a constant c (kC0 only), ``c P = c sum sg(delta) x_g`` is linear in x_g."""
    x_g, d_teacher, d_fake, _, _ = make_inputs(seed=1)
    k = torch.zeros(5, x_g.shape[0], dtype=F64)
    k[0], k[1], k[2] = 0.7, -0.3, 1.9
    co = FF.Coefficients(k, normalize=False)
    x = x_g.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: FF.score_distill_core_reference(t, d_teacher, d_fake, co)[0], (x,))


@pytest.mark.parametrize("weighting", ["none", "tensor"])
def test_score_distill_loss_rkl_passes_gradcheck(weighting):
    """rkl has h' = g' = 0, so with a fixed weighting the loss is the genuine function (2 S + F) w / sigma^4."""
    x_g, d_teacher, d_fake, sigma, log_ratio = make_inputs(seed=2)
    w = "none" if weighting == "none" else torch.rand(4, dtype=F64) + 0.5
    ins = tuple(t.clone().requires_grad_(True) for t in (x_g, d_teacher, d_fake))
    assert torch.autograd.gradcheck(
        lambda *t: FF.score_distill_loss(*t, sigma, log_ratio, divergence="rkl", weighting=w, reduction="none"), ins)


def test_sid_loss_passes_gradcheck_in_d_fake():
    """1/w_f depends on x_g and D_teacher only, so as a function of D_fake sid_loss is a genuine function."""
    x_g, d_teacher, d_fake, _, _ = make_inputs(seed=3)
    df = d_fake.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: FF.sid_loss(x_g, d_teacher, t, alpha=1.2, reduction="none"), (df,))


def test_fake_score_and_discriminator_losses_pass_gradcheck():
    x_g, _, d_fake, sigma, _ = make_inputs(seed=3)
    df = d_fake.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: FF.fake_score_loss(t, x_g, sigma), (df,))
    lf = torch.randn(4, 1, 2, 2, dtype=F64, requires_grad=True)
    lr = torch.randn(4, 1, 2, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(FF.discriminator_loss, (lf, lr))
# ------------------------------------------------------------------------------------------------------------------
# Non-finite samples are excluded exactly
# ------------------------------------------------------------------------------------------------------------------

BAD = 2  # index of the corrupted sample


def corrupt(which, x_g, d_teacher, d_fake, sigma, log_ratio):
    x_g, d_teacher, d_fake, sigma, log_ratio = (t.clone() for t in (x_g, d_teacher, d_fake, sigma, log_ratio))
    target = {"x_g": x_g, "d_teacher": d_teacher, "d_fake": d_fake, "sigma": sigma, "log_ratio": log_ratio}[which]
    value = {"x_g": float("nan"), "d_teacher": float("inf"), "d_fake": -float("inf"), "sigma": float("nan"),
             "log_ratio": float("nan")}[which]
    target.view(target.shape[0], -1)[BAD, 0] = value
    return x_g, d_teacher, d_fake, sigma, log_ratio


def run(loss_fn, x_g, d_teacher, d_fake, sigma, log_ratio, reduction):
    ins = [t.clone().requires_grad_(True) for t in (x_g, d_teacher, d_fake)]
    out, stats = loss_fn(*ins, sigma, log_ratio, reduction=reduction, return_stats=True)
    grads = torch.autograd.grad(out.sum(), ins, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(ins, grads)]
    return out.detach(), grads, stats


def uni_fkl(x, dt, df, sigma, lr, **kw):
    return FF.score_distill_loss(x, dt, df, sigma, lr, divergence="fkl", **kw)


def preset(name):
    def fn(x, dt, df, sigma, lr, **kw):
        return FF.preset_loss(name, x, dt, df, sigma, lr, **kw)

    return fn


EXCLUSION_CASES = [("uni_fkl", uni_fkl, w) for w in ("x_g", "d_teacher", "d_fake", "sigma", "log_ratio")]
EXCLUSION_CASES += [(f"preset_{name}", preset(name), "x_g") for name in sorted(FF._div.PRESETS)]
EXCLUSION_CASES += [(f"preset_{name}", preset(name), "d_fake") for name in ("sid", "dmd", "uni")]


@pytest.mark.parametrize("label, loss_fn, which", EXCLUSION_CASES, ids=[f"{c[0]}-{c[2]}" for c in EXCLUSION_CASES])
def test_nonfinite_sample_is_excluded_exactly(label, loss_fn, which):
    clean = make_inputs(batch=5, seed=7)
    bad = corrupt(which, *clean)
    loss_c, grads_c, _ = run(loss_fn, *clean, reduction="none")
    loss_b, grads_b, stats = run(loss_fn, *bad, reduction="none")
    keep = [i for i in range(5) if i != BAD]
    assert int(stats["n_nonfinite"]) == 1
    assert stats["valid"].tolist() == [i != BAD for i in range(5)]
    assert loss_b[BAD].item() == 0.0
    torch.testing.assert_close(loss_b[keep], loss_c[keep], rtol=1e-12, atol=1e-12)
    for gb, gc in zip(grads_b, grads_c):
        assert torch.isfinite(gb).all()
        assert (gb[BAD] == 0).all()
        torch.testing.assert_close(gb[keep], gc[keep], rtol=1e-12, atol=1e-12)
    mean_b, _, _ = run(loss_fn, *bad, reduction="mean")
    torch.testing.assert_close(mean_b, loss_c[keep].sum() / 4, rtol=1e-12, atol=1e-12)  # divides by finite count


def test_fake_score_loss_excludes_nonfinite_sample():
    x_g, _, d_fake, sigma, _ = make_inputs(batch=5, seed=8)
    bad = d_fake.clone()
    bad[BAD, 0, 0, 0] = float("nan")
    keep = [i for i in range(5) if i != BAD]
    outs = []
    for df in (d_fake, bad):
        t = df.clone().requires_grad_(True)
        loss, stats = FF.fake_score_loss(t, x_g, sigma, reduction="none", return_stats=True)
        (g,) = torch.autograd.grad(loss.sum(), t)
        outs.append((loss.detach(), g, stats))
    (lc, gc, _), (lb, gb, stats) = outs
    assert int(stats["n_nonfinite"]) == 1 and lb[BAD] == 0 and (gb[BAD] == 0).all()
    torch.testing.assert_close(lb[keep], lc[keep], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb[keep], gc[keep], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(FF.fake_score_loss(bad, x_g, sigma), lc[keep].sum() / 4, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# Bad inputs raise ValueError naming the argument
# ------------------------------------------------------------------------------------------------------------------


def bad_input_cases():
    x, dt, df, sigma, lr = make_inputs(dtype=torch.float32)
    meta = torch.device("meta")
    cases = {
        "d_teacher shape": ("d_teacher", {"d_teacher": dt[:, :1]}),
        "d_fake shape": ("d_fake", {"d_fake": df[:3]}),
        "sigma length": ("sigma", {"sigma": sigma[:3]}),
        "sigma 2-d": ("sigma", {"sigma": sigma.reshape(2, 2)}),
        "log_ratio length": ("log_ratio", {"log_ratio": lr[:3]}),
        "log_ratio scalar": ("log_ratio", {"log_ratio": 0.0}),
        "x_g integer": ("x_g", {"x_g": x.long()}),
        "d_teacher integer": ("d_teacher", {"d_teacher": dt.to(torch.int32)}),
        "d_fake integer": ("d_fake", {"d_fake": df.to(torch.uint8)}),
        "sigma integer": ("sigma", {"sigma": torch.ones(4, dtype=torch.int64)}),
        "log_ratio integer": ("log_ratio", {"log_ratio": torch.zeros(4, dtype=torch.int64)}),
        "d_teacher device": ("d_teacher", {"d_teacher": dt.to(meta)}),
        "d_fake device": ("d_fake", {"d_fake": df.to(meta)}),
        "sigma device": ("sigma", {"sigma": sigma.to(meta)}),
        "log_ratio device": ("log_ratio", {"log_ratio": lr.to(meta)}),
        "x_g not a tensor": ("x_g", {"x_g": x.tolist()}),
        "x_g empty batch": ("x_g", {"x_g": x[:0], "d_teacher": dt[:0], "d_fake": df[:0]}),
    }
    base = {"x_g": x, "d_teacher": dt, "d_fake": df, "sigma": sigma, "log_ratio": lr}
    return [(key, arg, {**base, **change}) for key, (arg, change) in cases.items()]


BAD_CASES = bad_input_cases()
PUBLIC = {"functional": FF.score_distill_loss}
try:
    import fastui

    if fastui.score_distill_loss is not FF.score_distill_loss:
        PUBLIC["public"] = fastui.score_distill_loss
except ImportError:  # pragma: no cover
    pass


@pytest.mark.parametrize("entry", sorted(PUBLIC))
@pytest.mark.parametrize("key, arg, kwargs", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_score_distill_loss_rejects_bad_input_naming_it(key, arg, kwargs, entry):
    kw = dict(kwargs)
    with pytest.raises(ValueError, match=arg):
        PUBLIC[entry](kw.pop("x_g"), kw.pop("d_teacher"), kw.pop("d_fake"), kw.pop("sigma"), kw.pop("log_ratio"),
                      divergence="fkl")


def preset_bad_cases():
    out = []
    for method in sorted(FF._div.PRESETS):
        p = FF._div.get_preset(method)
        for key, arg, kwargs in BAD_CASES:
            if key == "log_ratio scalar" and not p.needs_ratio:
                continue  # such methods take log_ratio=None; a number is covered for the ratio methods
            out.append(pytest.param(method, arg, kwargs, id=f"{method}-{key}"))
    return out


@pytest.mark.parametrize("method, arg, kwargs", preset_bad_cases())
def test_preset_loss_rejects_bad_input_naming_it(method, arg, kwargs):
    kw = dict(kwargs)
    with pytest.raises(ValueError, match=arg):
        FF.preset_loss(method, kw.pop("x_g"), kw.pop("d_teacher"), kw.pop("d_fake"), kw.pop("sigma"),
                       kw.pop("log_ratio"))


def test_bad_options_raise_value_error():
    x, dt, df, sigma, lr = make_inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="divergence"):
        FF.score_distill_loss(x, dt, df, sigma, lr, divergence="kl_typo")
    with pytest.raises(ValueError, match="reduction"):
        FF.score_distill_loss(x, dt, df, sigma, lr, reduction="avg")
    with pytest.raises(ValueError, match="weighting"):
        FF.score_distill_loss(x, dt, df, sigma, lr, weighting="edm")
    with pytest.raises(ValueError, match="weighting"):
        FF.score_distill_loss(x, dt, df, sigma, lr, weighting=torch.ones(3))
    with pytest.raises(ValueError, match="method"):
        FF.preset_loss("dmd3", x, dt, df, sigma, lr)


@pytest.mark.parametrize("arg, make", [
    pytest.param("d_fake", lambda x, df, s: (df[:, :1], x, s)),
    pytest.param("d_fake", lambda x, df, s: (df.long(), x, s)),
    ("x_g", lambda x, df, s: (df, x.long(), s)),
    ("sigma", lambda x, df, s: (df, x, s[:2])),
])
def test_fake_score_loss_rejects_bad_input_naming_it(arg, make):
    x, _, df, sigma, _ = make_inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match=arg):
        FF.fake_score_loss(*make(x, df, sigma))
