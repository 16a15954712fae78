"""The fused loss inside a plain PyTorch training loop that uses nothing else from fastui (README "own trainer").

Teacher data N(0, I) and a Gaussian generator x_g = m + s z have closed-form denoisers, so the fake score is exact and
the loop must drive the generator to the teacher: m -> 0, s -> 1.
"""

import torch

import fastui


def test_plain_pytorch_loop_with_the_fused_loss_recovers_the_teacher_distribution():
    torch.manual_seed(0)
    dim, batch = 4, 256
    m = torch.nn.Parameter(torch.full((dim,), 2.0))
    log_s = torch.nn.Parameter(torch.tensor(-1.0))
    opt = torch.optim.Adam([m, log_s], lr=0.05)

    def teacher(x, sigma):  # exact denoiser of N(0, I) at noise sigma
        return x / (1 + sigma**2)

    def fake(x, sigma):  # exact denoiser of the generator's N(m, s^2 I) (parameters detached, input not)
        s2 = log_s.detach().exp() ** 2
        return (s2 * x + sigma**2 * m.detach()) / (s2 + sigma**2)

    for _ in range(300):
        x_g = m + log_s.exp() * torch.randn(batch, dim)
        sigma = torch.full((batch, 1), 1.0)
        x_t = x_g + sigma * torch.randn(batch, dim)
        loss = fastui.score_distill_loss(x_g, teacher(x_t, sigma), fake(x_t, sigma), sigma[:, 0],
                                         divergence="rkl", weighting="none")
        opt.zero_grad()
        loss.backward()
        opt.step()

    assert m.abs().max().item() < 0.2, m
    assert abs(log_s.exp().item() - 1.0) < 0.1, log_s.exp()
