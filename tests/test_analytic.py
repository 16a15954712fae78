"""Analytic teachers: closed-form noisy densities, scores and denoisers agree with independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from fastui.analytic import GaussianTeacher, GMMTeacher, ring8

F64 = torch.float64


def gmm3d() -> GMMTeacher:
    covs = torch.tensor([[[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.8]],
                         [[0.4, -0.1, 0.05], [-0.1, 0.9, 0.0], [0.05, 0.0, 0.3]]], dtype=F64)
    return GMMTeacher([0.3, 0.7], [[0.0, 1.0, -1.0], [1.0, -0.5, 0.5]], covs)


def test_log_prob_is_mixture_of_noisy_gaussians():
    t, sigma = gmm3d(), 0.6
    x = torch.randn(7, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    comps = [torch.distributions.MultivariateNormal(t.means[k], t.covs[k] + sigma**2 * torch.eye(3, dtype=F64))
             for k in range(2)]
    want = torch.logsumexp(torch.stack([math.log(w) + c.log_prob(x) for w, c in zip((0.3, 0.7), comps)]), 0)
    torch.testing.assert_close(t.log_prob(x, sigma), want, rtol=1e-12, atol=1e-12)


def test_score_is_gradient_of_log_prob_and_denoiser_is_tweedie():
    t = gmm3d()
    x = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0, 20.0], dtype=F64)
    (grad,) = torch.autograd.grad(t.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(t.score(x, sigma), grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(t(x, sigma), x + sigma[:, None] ** 2 * grad, rtol=1e-10, atol=1e-10)


def test_gaussian_denoiser_is_posterior_mean():
    mean = torch.tensor([0.5, -1.0], dtype=F64)
    cov = torch.tensor([[0.7, 0.2], [0.2, 0.3]], dtype=F64)
    t, sigma = GaussianTeacher(mean, cov), 0.8
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    # E[x0 | x_t] = m + C (C + s^2 I)^-1 (x_t - m)
    want = mean + (x - mean) @ torch.linalg.solve(cov + sigma**2 * torch.eye(2, dtype=F64), cov)
    torch.testing.assert_close(t(x, sigma), want, rtol=1e-12, atol=1e-12)


def test_mixture_denoiser_matches_monte_carlo_posterior_mean():
    """E[x0 | x_t] by importance weighting of prior samples with the Gaussian kernel (independent of Tweedie)."""
    t, sigma = ring8(), 0.3
    g = torch.Generator().manual_seed(3)
    x0 = t.sample(400_000, generator=g, dtype=F64)
    x_t = torch.tensor([[0.9, 0.1], [0.0, 0.0], [-0.5, 0.7]], dtype=F64)
    logw = -((x_t[:, None, :] - x0[None]) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(logw, dim=1)
    want = w @ x0
    torch.testing.assert_close(t(x_t, sigma), want, rtol=0, atol=5e-3)


def test_sample_moments_and_shapes():
    t = gmm3d()
    x, labels = t.sample(200_000, generator=torch.Generator().manual_seed(4), return_labels=True, dtype=F64)
    assert x.shape == (200_000, 3) and labels.shape == (200_000,)
    mean = 0.3 * t.means[0] + 0.7 * t.means[1]
    torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=1e-2)
    second = sum(w * (t.covs[k] + torch.outer(t.means[k], t.means[k])) for k, w in enumerate((0.3, 0.7)))
    torch.testing.assert_close(x.T @ x / x.shape[0], second, rtol=0, atol=2e-2)
    assert abs((labels == 1).double().mean().item() - 0.7) < 5e-3


def test_image_shaped_inputs_and_class_labels():
    t = GMMTeacher([0.5, 0.5], torch.randn(2, 12, dtype=F64), 0.2, event_shape=(3, 2, 2))
    x = torch.randn(4, 3, 2, 2)
    out = t(x, torch.full((4,), 0.5))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert t.sample(5).shape == (5, 3, 2, 2)
    # class label k: the denoiser of component k alone (a Gaussian: m + C/(C + s^2) (x - m) with C = 0.2 I)
    lab = torch.tensor([0, 1, 1, 0])
    want = t.means[lab].reshape(4, 3, 2, 2) + 0.2 / (0.2 + 0.25) * (x.double() - t.means[lab].reshape(4, 3, 2, 2))
    torch.testing.assert_close(t(x, 0.5, class_labels=lab), want.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t(x, 0.5, class_labels=torch.nn.functional.one_hot(lab, 2)),
                               t(x, 0.5, class_labels=lab))


def test_ring8_geometry():
    t = ring8(radius=2.0, std=0.05)
    torch.testing.assert_close(t.means.norm(dim=1), torch.full((8,), 2.0, dtype=F64))
    torch.testing.assert_close(t.covs, 0.0025 * torch.eye(2, dtype=F64).expand(8, 2, 2))


@pytest.mark.parametrize("bad", [{"weights": [1.0, -1.0]}, {"covs": -torch.eye(2)}, {"means": [0.0, 1.0]}])
def test_invalid_parameters_raise(bad):
    kw = {"weights": [1.0, 1.0], "means": [[0.0, 0.0], [1.0, 1.0]], "covs": torch.eye(2)}
    kw.update(bad)
    with pytest.raises(ValueError):
        GMMTeacher(**kw)
