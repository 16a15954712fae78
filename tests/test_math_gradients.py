"""The unified generator loss is an unbiased estimate of the exact gradient of ``J_sigma`` (MATH §5, §9).

For an affine generator ``x_0 = mu + A z`` the student's noisy marginal is ``q_t = N(mu, A A^T + sigma^2 I)``, and for
an analytic teacher (Gaussian or Gaussian mixture) ``p_t`` is closed form too. So both sides are computable to ~1e-9:

- reference: ``J(mu, A) = E_{q_t}[h(r) ||s_p - s_q||^2]`` by Gauss-Hermite quadrature in ``x_t`` and its gradient by a
  5-point finite difference. It uses only the analytic densities/scores, never the code under test.
- library: ``E_{z, eps}[grad_theta L]`` where ``L`` is ``score_distill_loss(..., weighting="none")`` on the exact
  denoisers (the fake one frozen at the current generator, its input carrying gradient) and ``log_ratio`` the exact
  ``log p_t - log q_t`` (detached). The expectation over ``(z, eps)`` is a Gauss-Hermite quadrature in rotated
  variables: ``x_t = mu + L u`` and ``z = E[z | x_t] + M v``. Given ``x_t``, the per-sample gradient is a polynomial of
  degree <= 2 in ``v`` (``e`` and ``c`` are affine in ``x_g``, times ``z`` for ``grad_A``), so 3 nodes per dimension
  in ``v`` are exact and only ``u`` needs many nodes.

Quadrature orders were chosen by convergence (each order against a larger one, all divergences): 1-D n_u=80 changes
the result by < 1e-13 against 120; 3-D Gaussian n_u=10 by < 4e-8 against 16; 2-D mixture n_u=40 by < 1e-7 against
60 (the mixture's ratio is not log-quadratic, so it needs more nodes).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import fastui
from fastui import divergences as D
from fastui import functional as FF
from fastui.analytic import GaussianTeacher, GMMTeacher

F64 = torch.float64
REL_TOL = 1e-6

# MATH §9: exact (dJ/dm, dJ/ds) for teacher N(0, 1), generator m + s z at m = 0.4, s = 0.8, sigma = 0.7.
MATH9_TABLE = {
    "rkl": (0.360344, -0.532346),
    "fkl": (0.626517, -1.153235),
    "jeffreys": (0.986861, -1.685582),
    "js": (0.205379, -0.327701),
    "pearson": (4.502413, -11.045416),
}


def divergence_cases() -> list[str]:
    """Every registered divergence (new entries are picked up), the alpha family at a few parameters."""
    out = []
    for name in D.names():
        out += ["alpha:0.5", "alpha:1.5", "alpha:-0.5"] if name == "alpha" else [name]
    return out


@functools.cache
def gauss_hermite(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor-product probabilists' Gauss-Hermite rule: nodes ``[n^d, d]``, weights ``[n^d]`` for ``E_{N(0, I_d)}``."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / math.sqrt(2 * math.pi)
    nodes = torch.tensor(list(itertools.product(x, repeat=d)), dtype=F64).reshape(-1, d)
    weights = torch.tensor([math.prod(c) for c in itertools.product(w, repeat=d)], dtype=F64)
    return nodes, weights


@dataclass
class Problem:
    """Teacher, affine generator ``mu + A z`` and one noise level; ``n_u`` quadrature nodes per dim in ``x_t``."""

    teacher: GMMTeacher
    mu: torch.Tensor
    A: torch.Tensor
    sigma: float
    n_u: int

    @property
    def dim(self) -> int:
        return self.mu.shape[0]


def noisy_cov(A: torch.Tensor, sigma: float) -> torch.Tensor:
    return A @ A.T + sigma**2 * torch.eye(A.shape[0], dtype=F64)


def student_log_prob_and_score(x: torch.Tensor, mu: torch.Tensor, A: torch.Tensor, sigma: float):
    """``log q_t`` and ``grad log q_t`` of ``q_t = N(mu, A A^T + sigma^2 I)``, written out (differentiable in mu, A)."""
    cov = noisy_cov(A, sigma)
    chol = torch.linalg.cholesky(cov)
    y = torch.linalg.solve_triangular(chol, (x - mu).T, upper=False)  # L^-1 (x - mu)
    log_q = -0.5 * (y * y).sum(0) - torch.log(torch.diagonal(chol)).sum() - 0.5 * x.shape[1] * math.log(2 * math.pi)
    score = -torch.cholesky_solve((x - mu).T, chol).T
    return log_q, score


def exact_objective(pb: Problem, div: D.Divergence, mu: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``J = E_{x ~ q_t}[h(r) ||s_p - s_q||^2]`` by quadrature, ``q_t = N(mu, A A^T + sigma^2 I)``."""
    u, w = gauss_hermite(pb.n_u, pb.dim)
    x = mu + u @ torch.linalg.cholesky(noisy_cov(A, pb.sigma)).T
    log_q, s_q = student_log_prob_and_score(x, mu, A, pb.sigma)
    r = (pb.teacher.log_prob(x, pb.sigma) - log_q).exp()
    h = torch.as_tensor(div.h(r), dtype=F64).expand_as(r)
    return (w * h * ((pb.teacher.score(x, pb.sigma) - s_q) ** 2).sum(1)).sum()


def finite_difference(fn, params: torch.Tensor, step: float = 1e-3) -> torch.Tensor:
    """5-point central difference (error O(step^4) ~ 1e-12 here) of a scalar function of a flat parameter vector."""
    grad = torch.zeros_like(params)
    for i in range(params.numel()):
        e = torch.zeros_like(params)
        e[i] = step
        grad[i] = (8 * (fn(params + e) - fn(params - e)) - (fn(params + 2 * e) - fn(params - 2 * e))) / (12 * step)
    return grad


def split(pb: Problem, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return params[: pb.dim], params[pb.dim :].reshape(pb.dim, pb.dim)


def flat(pb: Problem) -> torch.Tensor:
    return torch.cat([pb.mu, pb.A.reshape(-1)])


def reference_gradient(pb: Problem, div: D.Divergence, method: str = "closed_form") -> torch.Tensor:
    """``(dJ/dmu, dJ/dA)`` flattened: the exact derivative of the quadrature objective (autograd through the closed
    form densities above), or its finite difference (``method="fd"``, ~25x slower, used to check the former)."""
    if method == "fd":
        return finite_difference(lambda p: exact_objective(pb, div, *split(pb, p)), flat(pb))
    params = flat(pb).requires_grad_(True)
    (grad,) = torch.autograd.grad(exact_objective(pb, div, *split(pb, params)), params)
    return grad


def quadrature_samples(pb: Problem, n_v: int = 3):
    """Nodes ``(z, eps)`` of the joint standard normal, rotated so that ``x_t`` depends on ``u`` only, and weights."""
    d, sigma = pb.dim, pb.sigma
    u, wu = gauss_hermite(pb.n_u, d)
    v, wv = gauss_hermite(n_v, d)
    u_all, v_all = u.repeat_interleave(v.shape[0], 0), v.repeat(u.shape[0], 1)
    weights = wu.repeat_interleave(v.shape[0]) * wv.repeat(u.shape[0])
    cov = noisy_cov(pb.A, sigma)
    chol = torch.linalg.cholesky(cov)
    x_t = pb.mu + u_all @ chol.T
    # z | x_t ~ N(A^T C^-1 (x_t - mu), I - A^T C^-1 A)
    mean_map = pb.A.T @ torch.linalg.solve(cov, chol)
    cond_chol = torch.linalg.cholesky(torch.eye(d, dtype=F64) - pb.A.T @ torch.linalg.solve(cov, pb.A))
    z = u_all @ mean_map.T + v_all @ cond_chol.T
    eps = (x_t - pb.mu - z @ pb.A.T) / sigma
    return z, eps, weights


def library_gradient(pb: Problem, loss_for_batch) -> torch.Tensor:
    """Quadrature expectation of the autograd gradient of a per-sample loss ``loss_for_batch(x_g, d_t, d_f, lr)``."""
    z, eps, weights = quadrature_samples(pb)
    mu = pb.mu.clone().requires_grad_(True)
    A = pb.A.clone().requires_grad_(True)
    x_g = mu + z @ A.T
    x_t = x_g + pb.sigma * eps
    fake = GaussianTeacher(pb.mu, pb.A @ pb.A.T)  # frozen at the current generator; its input carries gradient
    d_teacher = pb.teacher(x_t, pb.sigma)
    d_fake = fake(x_t, pb.sigma)
    log_ratio = (pb.teacher.log_prob(x_t, pb.sigma) - fake.log_prob(x_t, pb.sigma)).detach()
    loss = loss_for_batch(x_g, d_teacher, d_fake, log_ratio)
    g_mu, g_A = torch.autograd.grad((weights * loss).sum(), (mu, A))
    return torch.cat([g_mu, g_A.reshape(-1)])


def unified_loss(loss_fn, pb: Problem, divergence: str):
    def per_sample(x_g, d_teacher, d_fake, log_ratio):
        sigma = torch.full((x_g.shape[0],), pb.sigma, dtype=F64)
        # the clamp of |log r| is a safety net of training; the exactness claim is about the unclamped loss
        return loss_fn(x_g, d_teacher, d_fake, sigma, log_ratio, divergence=divergence, weighting="none",
                       reduction="none", log_ratio_clamp=1e4)

    return per_sample


def assert_close_rel(got: torch.Tensor, want: torch.Tensor, tol: float = REL_TOL) -> None:
    err = (got - want).abs().max().item() / want.abs().max().item()
    assert err < tol, f"relative error {err:.3e} >= {tol:g}\n got  {got.tolist()}\n want {want.tolist()}"


def problem_1d() -> Problem:
    return Problem(GaussianTeacher([0.0], [[1.0]]), torch.tensor([0.4], dtype=F64), torch.tensor([[0.8]], dtype=F64),
                   0.7, n_u=80)


def problem_gaussian_3d() -> Problem:
    teacher = GaussianTeacher([0.3, -0.2, 0.1], [[1.0, 0.3, 0.1], [0.3, 0.8, -0.2], [0.1, -0.2, 1.2]])
    A = torch.tensor([[0.95, 0.0, 0.1], [0.2, 0.85, 0.0], [0.1, -0.2, 1.0]], dtype=F64)  # full, non-symmetric
    return Problem(teacher, torch.tensor([0.1, 0.0, 0.2], dtype=F64), A, 1.0, n_u=10)


def problem_gmm_2d() -> Problem:
    teacher = GMMTeacher([0.6, 0.4], [[-0.5, 0.2], [0.6, -0.3]],
                         [[[0.5, 0.1], [0.1, 0.4]], [[0.3, -0.1], [-0.1, 0.6]]])
    A = torch.tensor([[0.8, 0.1], [-0.1, 0.7]], dtype=F64)
    return Problem(teacher, torch.tensor([0.1, -0.1], dtype=F64), A, 0.8, n_u=40)


LOSS_FNS = {"reference": FF.score_distill_loss}
if fastui.score_distill_loss is not FF.score_distill_loss:  # the dispatched public entry point, once it exists
    LOSS_FNS["public"] = fastui.score_distill_loss


@pytest.mark.parametrize("name", sorted(MATH9_TABLE))
def test_reference_gradient_reproduces_math9_table(name):
    pb = problem_1d()
    ref = reference_gradient(pb, D.get(name), method="fd")
    # the table prints 6 decimals
    np.testing.assert_allclose(ref.numpy(), np.array(MATH9_TABLE[name]), rtol=0, atol=6e-7)


@pytest.mark.parametrize("make_problem", [problem_1d, problem_gmm_2d])
def test_closed_form_reference_gradient_equals_finite_difference(make_problem):
    pb = make_problem()
    fd = reference_gradient(pb, D.get("neyman"), method="fd")
    assert_close_rel(reference_gradient(pb, D.get("neyman")), fd, tol=1e-8)


@pytest.mark.parametrize("loss_name", sorted(LOSS_FNS))
@pytest.mark.parametrize("divergence", divergence_cases())
def test_loss_gradient_is_exact_gradient_1d_gaussian(divergence, loss_name):
    pb = problem_1d()
    got = library_gradient(pb, unified_loss(LOSS_FNS[loss_name], pb, divergence))
    assert_close_rel(got, reference_gradient(pb, D.get(divergence)))
    if divergence in MATH9_TABLE:
        np.testing.assert_allclose(got.numpy(), np.array(MATH9_TABLE[divergence]), rtol=0, atol=6e-7)


@pytest.mark.parametrize("divergence", divergence_cases())
def test_loss_gradient_is_exact_gradient_3d_full_covariance_gaussian(divergence):
    pb = problem_gaussian_3d()
    got = library_gradient(pb, unified_loss(FF.score_distill_loss, pb, divergence))
    assert_close_rel(got, reference_gradient(pb, D.get(divergence)))


@pytest.mark.parametrize("divergence", divergence_cases())
def test_loss_gradient_is_exact_gradient_2d_gaussian_mixture(divergence):
    pb = problem_gmm_2d()
    got = library_gradient(pb, unified_loss(FF.score_distill_loss, pb, divergence))
    assert_close_rel(got, reference_gradient(pb, D.get(divergence)))


def test_quadrature_orders_are_converged():
    """The reference objective at the chosen order agrees with a higher order (guards the parameters above)."""
    for pb, more in ((problem_gaussian_3d(), 16), (problem_gmm_2d(), 60)):
        for name in ("pearson", "neyman", "js"):
            div = D.get(name)
            j = exact_objective(pb, div, pb.mu, pb.A)
            j_more = exact_objective(Problem(pb.teacher, pb.mu, pb.A, pb.sigma, more), div, pb.mu, pb.A)
            assert abs(j - j_more) < 1e-7 * abs(j_more)  # 10x below the tolerance of the gradient tests


def test_dropping_the_h_prime_term_breaks_the_gradient():
    """MATH §5 pitfall: without ``2 h'(r) S`` in ``c`` the fkl gradient of ``s`` is -0.879 instead of -1.153."""
    pb = problem_1d()

    def without_dh(x_g, d_teacher, d_fake, log_ratio):
        sigma = torch.full((x_g.shape[0],), pb.sigma, dtype=F64)
        co = FF.score_distill_coefficients(sigma, log_ratio, divergence="fkl", weighting="none",
                                           log_ratio_clamp=1e4, dtype=F64)
        k = co.k.clone()
        k[4] = 0  # kCS: the 2 r h'(r) S / sigma^6 part of c
        return FF.score_distill_core_reference(x_g, d_teacher, d_fake, co._replace(k=k))[0]

    got = library_gradient(pb, without_dh)
    assert abs(got[1].item() - (-0.879)) < 1e-3
    assert abs(got[0].item() - MATH9_TABLE["fkl"][0]) < 1e-6  # the mean's gradient is still right


# ------------------------------------------------------------------------------------------------------------------
# sid(alpha = 1) is the frozen-measure Fisher gradient (SIM), MATH §6
# ------------------------------------------------------------------------------------------------------------------


def frozen_measure_fisher_gradient(pb: Problem) -> torch.Tensor:
    """``grad_theta E_{x ~ q_t(theta0)}[||s_p(x) - s_{q_t(theta)}(x)||^2]`` at ``theta = theta0``: the samples are
    frozen, only the student's score moves (quadrature; exact derivative of the closed form)."""
    u, w = gauss_hermite(pb.n_u, pb.dim)
    x = pb.mu + u @ torch.linalg.cholesky(noisy_cov(pb.A, pb.sigma)).T
    s_p = pb.teacher.score(x, pb.sigma)

    params = flat(pb).requires_grad_(True)
    s_q = student_log_prob_and_score(x, *split(pb, params), pb.sigma)[1]
    (grad,) = torch.autograd.grad((w * ((s_p - s_q) ** 2).sum(1)).sum(), params)
    return grad


@pytest.mark.parametrize("make_problem", [problem_gaussian_3d, problem_gmm_2d], ids=["gaussian3d", "gmm2d"])
def test_sid_alpha1_is_half_the_frozen_measure_fisher_gradient(make_problem):
    """Derivation: with ``u = s_p - s_q`` and ``J = E_{q_t}||u||^2``, ``grad J = M + K`` where ``M`` moves the samples
    (score functions frozen) and ``K = grad E_{frozen samples}||u_theta||^2``. ``F/sigma^4 = ||u||^2`` at frozen
    functions gives ``M``, and MATH §5 with rkl (h = g = 1) says ``grad E[(2S + F)/sigma^4] = M + K``, hence
    ``grad E[S]/sigma^4 = K/2``: SiD(alpha=1) = S is half the frozen-measure (SIM) Fisher gradient."""
    pb = make_problem()
    wf = 1e3  # every sample's DMD normaliser is made exactly wf, so sid_loss's 1/w_f is a constant

    def sid_alpha1(x_g, d_teacher, d_fake, log_ratio):
        # one inert extra coordinate (delta = 0 there, so it adds nothing to S, F, P or any gradient) whose
        # |x_g - D_teacher| tops the pixel sum up to wf * (d + 1)
        pad = (wf * (x_g.shape[1] + 1) - (x_g - d_teacher).abs().sum(1, keepdim=True)).detach()
        zero = torch.zeros_like(pad)
        return FF.sid_loss(torch.cat([x_g, pad], 1), torch.cat([d_teacher, zero], 1), torch.cat([d_fake, zero], 1),
                           alpha=1.0, weight=1.0, reduction="none")

    got = library_gradient(pb, sid_alpha1) * wf / pb.sigma**4
    assert_close_rel(got, 0.5 * frozen_measure_fisher_gradient(pb))
