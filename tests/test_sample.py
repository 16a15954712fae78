"""fastui.sample: Karras schedule, Heun sampler (checked on an exact Gaussian denoiser), one-step, CLI."""

import numpy as np
import pytest
import torch

from fastui import networks as N
from fastui.sample import heun_sample, karras_sigmas, main, one_step
from fastui.teachers import save_checkpoint


class ExactGaussianDenoiser(torch.nn.Module):
    """D(x; sigma) = E[x0 | x] for x0 ~ N(mu, s^2 I): mu + s^2 / (s^2 + sigma^2) (x - mu)."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)


def test_karras_sigmas_follow_the_rho_schedule():
    s = karras_sigmas(18)
    assert len(s) == 19 and s[-1] == 0
    assert s[0].item() == pytest.approx(80.0) and s[17].item() == pytest.approx(0.002)
    mid = (80 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert karras_sigmas(3)[1].item() == pytest.approx(mid)


def test_heun_sampler_reproduces_gaussian_marginal():
    mu, s = 0.3, 0.5
    z = torch.randn(4000, 4, generator=torch.Generator().manual_seed(0))
    # The exact probability-flow ODE maps the start x = 80 z to mu + s * 80 / sqrt(80^2 + s^2) * z: compare with
    # that per sample (no sampling error). Heun's error is O(1/N^2): a few % of s at 18-35 steps, 0 in the limit.
    exact = mu + s * 80 / (80**2 + s**2) ** 0.5 * z
    net = ExactGaussianDenoiser(mu, s)
    errors = {n: (heun_sample(net, z, num_steps=n) - exact).std().item() / s for n in (18, 35, 100)}
    assert errors[35] < 0.03 and errors[100] < 0.003
    assert errors[100] < errors[35] < errors[18]
    x = heun_sample(net, z, num_steps=35)
    assert x.mean().item() == pytest.approx(mu, abs=0.01)
    assert x.std().item() == pytest.approx(s, rel=0.03)


def test_heun_correction_beats_euler_against_the_exact_flow():
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1))
    net = ExactGaussianDenoiser(0.0, 0.5)
    exact = 0.5 * 80 / (80**2 + 0.25) ** 0.5 * z
    err_heun = (heun_sample(net, z, num_steps=35) - exact).abs().max().item()
    err_euler = (heun_sample(net, z, num_steps=35, second_order=False) - exact).abs().max().item()
    assert err_heun < 0.2 * err_euler


def test_heun_on_analytic_gaussian_teacher_matches_its_marginal():
    analytic = pytest.importorskip("fastui.analytic")
    mean = torch.tensor([0.5, -0.25], dtype=torch.float64)
    cov = torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=torch.float64)
    teacher = analytic.GaussianTeacher(mean, cov)
    x = heun_sample(teacher, torch.randn(8000, 2, generator=torch.Generator().manual_seed(2)), num_steps=60)
    # 8000 samples: standard errors ~0.006 (mean) and ~0.005 (covariance entries)
    torch.testing.assert_close(x.double().mean(0), mean, atol=0.015, rtol=0)
    torch.testing.assert_close(torch.cov(x.double().T), cov, atol=0.015, rtol=0)


def test_one_step_calls_generator_at_sigma_init_with_scaled_noise():
    seen = {}

    def gen(x, sigma, labels):
        seen.update(x=x, sigma=sigma, labels=labels)
        return x * 0 + 1

    z = torch.randn(3, 1, 4, 4)
    out = one_step(gen, z, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(seen["x"], 2.5 * z)
    torch.testing.assert_close(seen["sigma"], torch.full((3,), 2.5))
    assert out.shape == z.shape


def test_sample_cli_writes_grid_and_npz(tmp_path):
    net = N.build(N.tiny_arch(N.small_unet_arch()))
    ckpt = save_checkpoint(net, tmp_path / "ckpt")
    rc = main(["--teacher", str(ckpt), "--steps", "2", "--n", "12", "--batch", "5", "--out", str(tmp_path / "o"),
               "--npz", "--device", "cpu"])
    assert rc == 0 and (tmp_path / "o" / "grid.png").is_file()
    d = np.load(tmp_path / "o" / "samples.npz")
    assert d["images"].shape == (12, 32, 32, 1) and d["images"].dtype == np.uint8
    assert d["labels"].tolist() == [i % 10 for i in range(12)]
    rc = main(["--generator", str(ckpt), "--n", "4", "--out", str(tmp_path / "g"), "--device", "cpu"])
    assert rc == 0 and (tmp_path / "g" / "grid.png").is_file()
    assert main(["--teacher", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
