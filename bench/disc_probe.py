"""Can the density-ratio discriminator tell the generator's samples from real images? (README, demo tuning, and
bench/results/longer_config.md)

``python -m bench.disc_probe [--kind shared|conv] [--depth D] [--weight W] [--dsm W] [--steps N] [--seed S]
[--generator DIR] [--held-out N]``

The fake score starts as the shipped demo teacher; real Fashion-MNIST training images (padded to 32) are told
apart from one-step samples at sigma_init = 2.5 of the initial generator (the teacher) or of ``--generator`` (a
fastui generator checkpoint directory, e.g. a run's ``generator_ema``), both noised with the same log-normal sigma
and noise as in the engine's fake step (MATH §3). Each Adam step (lr 3e-4, betas 0 / 0.999, batch 32) minimises
``weight x L_disc + dsm x L_fake``; ``--dsm 0`` trains the discriminator alone. Prints ``L_disc`` (2 ln 2 = 1.386
means chance) and ``L_fake`` every 10 steps; with ``--held-out N``, at the end, ``L_disc`` and the accuracy (mean of
the fake and real hit rates, sign of the patch-mean logit) on N unseen real images and N unseen samples by sigma band.
The training pool holds 2,048 real images and 256 samples of the initial generator, or 2,048 of ``--generator``.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

import fastui
from fastui.data.importers import fashion_mnist
from fastui.teachers import load_checkpoint, load_teacher
from fastui.train.models import FakeScoreWithDisc

BANDS = ((0.0, 0.1), (0.1, 0.3), (0.3, 1.0), (1.0, 3.0), (3.0, float("inf")))


def sample_sigma(n: int) -> torch.Tensor:
    """The engine's log-normal sigma of the fake / discriminator step (``p_mean`` -1.2, ``p_std`` 1.2)."""
    return (torch.randn(n) * 1.2 - 1.2).exp()


def real_images(count: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` Fashion-MNIST training images padded to 32x32 in [-1, 1], and their one-hot labels: the first ones,
    or a random draw without repetition when ``seed`` is given."""
    images, labels, _ = fashion_mnist(split="train")
    idx = slice(0, count) if seed is None else \
        torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count].numpy()
    real = F.pad(torch.from_numpy(images[idx]).float().permute(0, 3, 1, 2), (2, 2, 2, 2)) / 127.5 - 1
    return real, F.one_hot(torch.from_numpy(labels[idx]).long(), 10).float()


@torch.no_grad()
def one_step_samples(gen, labels: torch.Tensor) -> torch.Tensor:
    """One-step samples of ``gen`` at sigma_init 2.5 for one-hot ``labels``, 256 at a time."""
    return torch.cat([gen(2.5 * torch.randn(len(c), 1, 32, 32), torch.full((len(c),), 2.5), c)
                      for c in labels.split(256)])


def held_out(net, fake, fake_c, real, real_c) -> list[str]:
    """Per-sigma-band ``L_disc`` and accuracy of ``net``'s discriminator on unseen fake / real images."""
    n = len(fake)
    sigma = sample_sigma(n)
    noise = torch.randn_like(fake) * sigma.view(-1, 1, 1, 1)
    with torch.no_grad():
        lf = net(fake + noise, sigma, fake_c, mode="logits").mean(1)
        lr = net(real + noise, sigma, real_c, mode="logits").mean(1)
    loss = F.softplus(lf) + F.softplus(-lr)
    hit = ((lf < 0).float() + (lr > 0).float()) / 2
    rows = [f"held-out ({n} + {n} images): L_disc {loss.mean():.3f}, accuracy {hit.mean():.3f}"]
    for lo, hi in BANDS:
        m = (sigma >= lo) & (sigma < hi)
        if m.any():
            rows.append(f"  sigma in [{lo:g}, {hi:g}): {int(m.sum())} pairs, L_disc {loss[m].mean():.3f}, "
                        f"accuracy {hit[m].mean():.3f}")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=("shared", "conv"), default="shared", help="discriminator.kind")
    p.add_argument("--depth", type=int, default=2, help="discriminator.depth (conv head)")
    p.add_argument("--weight", type=float, default=1.0, help="discriminator.weight (of L_disc)")
    p.add_argument("--dsm", type=float, default=1.0, help="weight of L_fake (0: the discriminator alone)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generator", default="", help="one-step generator checkpoint (default: the initial generator)")
    p.add_argument("--held-out", type=int, default=0, help="unseen images of each kind scored at the end")
    args = p.parse_args(argv)
    if not 1 <= args.depth <= 8 or args.held_out < 0 or args.steps < 1:
        p.error("--depth must be in 1..8, --held-out >= 0 and --steps >= 1")
    if args.kind == "shared" and args.depth != 2:
        p.error("--depth applies to --kind conv only")
    torch.manual_seed(args.seed)

    pool = 2048
    real, real_c = real_images(pool + args.held_out)
    teacher = load_teacher("demo")
    gen = load_checkpoint(args.generator).eval() if args.generator else teacher
    net = FakeScoreWithDisc(copy.deepcopy(teacher), args.kind, (1, 32, 32), 64, args.depth).requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4, betas=(0.0, 0.999))
    n_fake = (pool if args.generator else 256) + args.held_out
    fake_c = real_c[torch.randint(0, pool, (n_fake,))]
    fake = one_step_samples(gen, fake_c)
    n_train = n_fake - args.held_out
    for step in range(1, args.steps + 1):
        i, j = torch.randint(0, pool, (32,)), torch.randint(0, n_train, (32,))
        sigma = sample_sigma(32)
        n = torch.randn(32, 1, 32, 32) * sigma.view(-1, 1, 1, 1)
        if args.dsm:
            d, logit_fake, logit_real = net(fake[j] + n, sigma, fake_c[j], mode="train", real=real[i] + n,
                                            real_labels=real_c[i])
            l_fake = fastui.fake_score_loss(d.float(), fake[j], sigma)
        else:  # the discriminator alone: no fake-score forward
            logit_fake = net(fake[j] + n, sigma, fake_c[j], mode="logits")
            logit_real = net(real[i] + n, sigma, real_c[i], mode="logits")
            l_fake = torch.zeros(())
        l_disc = fastui.discriminator_loss(logit_fake, logit_real)
        opt.zero_grad()
        (args.weight * l_disc + args.dsm * l_fake).backward()
        opt.step()
        if step % 10 == 0:
            print(f"{args.kind} depth {args.depth} weight {args.weight:g} dsm {args.dsm:g} step {step}: "
                  f"L_disc {l_disc.item():.4f} L_fake {l_fake.item():.1f}", flush=True)
    if args.held_out:
        print("\n".join(held_out(net, fake[n_train:], fake_c[n_train:], real[pool:], real_c[pool:])), flush=True)


if __name__ == "__main__":
    main()
