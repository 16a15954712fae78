"""Every registry entry is a consistent f-divergence: ``h = f'' r^2``, closed-form ``h', h''`` equal autograd's, and
``g, g'`` follow (MATH §4)."""

from __future__ import annotations

import pytest
import torch

from fastui import divergences as D

F64 = torch.float64
R = torch.logspace(-1.5, 1.5, 41, dtype=F64)  # ratios from 0.03 to 30


def divergence_cases() -> list[str]:
    out = []
    for name in D.names():
        out += ["alpha:0", "alpha:0.5", "alpha:1", "alpha:1.5", "alpha:2", "alpha:-0.5"] if name == "alpha" else [name]
    return out


def autograd_derivatives(fn, r: torch.Tensor, order: int) -> list[torch.Tensor]:
    """``[fn, fn', ..., fn^(order)]`` at ``r`` by repeated autograd (elementwise ``fn``)."""
    x = r.clone().requires_grad_(True)
    out = [torch.as_tensor(fn(x), dtype=F64).expand_as(x)]
    for _ in range(order):
        prev = out[-1]
        if not prev.requires_grad:
            out.append(torch.zeros_like(r))
            continue
        (d,) = torch.autograd.grad(prev.sum(), x, create_graph=True)
        out.append(d)
    return [t.detach() for t in out]


@pytest.mark.parametrize("name", divergence_cases())
def test_h_equals_second_derivative_of_f_times_r_squared(name):
    div = D.get(name)
    assert div.f is not None, f"{name}: registry entries document f so that h can be checked"
    f2 = autograd_derivatives(div.f, R, 2)[2]
    h = torch.as_tensor(div.h(R), dtype=F64).expand_as(R)
    torch.testing.assert_close(h, f2 * R * R, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", divergence_cases())
def test_closed_form_derivatives_equal_autograd(name):
    div = D.get(name)
    _, dh, d2h = autograd_derivatives(div.h, R, 2)
    if div.dh is not None:
        torch.testing.assert_close(torch.as_tensor(div.dh(R), dtype=F64).expand_as(R), dh, rtol=1e-10, atol=1e-12)
    if div.d2h is not None:
        torch.testing.assert_close(torch.as_tensor(div.d2h(R), dtype=F64).expand_as(R), d2h, rtol=1e-10, atol=1e-12)
    co = div.coefficients(R)
    torch.testing.assert_close(co["h"], torch.as_tensor(div.h(R), dtype=F64).expand_as(R), rtol=1e-12, atol=0)
    torch.testing.assert_close(co["dh"], dh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(co["g"], co["h"] - R * dh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(co["dg"], -R * d2h, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", divergence_cases())
def test_autograd_fallback_matches_closed_form(name):
    """A user entry giving only ``h`` gets the same coefficients as the closed-form built-in."""
    div = D.get(name)
    h_only = D.Divergence(name + "_h_only", h=div.h)
    for key, value in h_only.coefficients(R).items():
        torch.testing.assert_close(value, div.coefficients(R)[key], rtol=1e-10, atol=1e-12, msg=key)


# MATH §4 table, written out independently: (h, g)
MATH4_TABLE = {
    "rkl": (lambda r: torch.ones_like(r), lambda r: torch.ones_like(r)),
    "fkl": (lambda r: r, lambda r: torch.zeros_like(r)),
    "jeffreys": (lambda r: 1 + r, lambda r: torch.ones_like(r)),
    "js": (lambda r: r / (1 + r), lambda r: r**2 / (1 + r) ** 2),
    "pearson": (lambda r: 2 * r**2, lambda r: -2 * r**2),
    "neyman": (lambda r: 2 / r, lambda r: 4 / r),
    "hellinger": (lambda r: r.sqrt() / 2, lambda r: r.sqrt() / 4),
    "softened_rkl": (lambda r: 1 / (1 + r), lambda r: (1 + 2 * r) / (1 + r) ** 2),
    "alpha:0.5": (lambda r: r**0.5, lambda r: 0.5 * r**0.5),
    "alpha:1.5": (lambda r: r**1.5, lambda r: -0.5 * r**1.5),
}


@pytest.mark.parametrize("name", sorted(MATH4_TABLE))
def test_coefficients_match_math4_table(name):
    h, g = MATH4_TABLE[name]
    co = D.get(name).coefficients(R)
    torch.testing.assert_close(co["h"], h(R), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(co["g"], g(R), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("a, same_as, scale", [(0.0, "rkl", 1.0), (1.0, "fkl", 1.0), (2.0, "pearson", 0.5)])
def test_alpha_family_special_cases(a, same_as, scale):
    co, ref = D.get("alpha", a=a).coefficients(R), D.get(same_as).coefficients(R)
    for key in ("h", "dh", "g", "dg"):
        torch.testing.assert_close(co[key], scale * ref[key], rtol=1e-12, atol=1e-14, msg=key)
