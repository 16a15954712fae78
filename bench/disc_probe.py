"""Can the density-ratio discriminator learn next to the fake score's DSM loss? (README, demo tuning)

``python -m bench.disc_probe [--kind shared|conv] [--weight W] [--dsm W] [--steps N] [--seed S]``

The fake score starts as the shipped demo teacher; real Fashion-MNIST training images (padded to 32) are told
apart from the initial generator's samples (the teacher applied once at sigma_init = 2.5), both noised with the same
log-normal sigma and noise as in the engine's fake step (MATH §3). Each Adam step (lr 3e-4, betas 0 / 0.999, batch
32) minimises ``weight x L_disc + dsm x L_fake``; ``--dsm 0`` trains the discriminator alone. Prints ``L_disc`` (2 ln 2 = 1.386 means chance) and ``L_fake`` every 10 steps.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

import fastui
from fastui.data.importers import fashion_mnist
from fastui.teachers import load_teacher
from fastui.train.models import FakeScoreWithDisc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=("shared", "conv"), default="shared", help="discriminator.kind")
    p.add_argument("--weight", type=float, default=1.0, help="discriminator.weight (of L_disc)")
    p.add_argument("--dsm", type=float, default=1.0, help="weight of L_fake (0: the discriminator alone)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)

    images, labels, _ = fashion_mnist(split="train")
    real = F.pad(torch.from_numpy(images[:2048]).float().permute(0, 3, 1, 2), (2, 2, 2, 2)) / 127.5 - 1
    real_c = F.one_hot(torch.from_numpy(labels[:2048]).long(), 10).float()
    teacher = load_teacher("demo")
    net = FakeScoreWithDisc(copy.deepcopy(teacher), args.kind, (1, 32, 32), 64).requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4, betas=(0.0, 0.999))
    with torch.no_grad():
        fake_c = real_c[torch.randint(0, 2048, (256,))]
        fake = teacher(2.5 * torch.randn(256, 1, 32, 32), torch.full((256,), 2.5), fake_c)
    for step in range(1, args.steps + 1):
        i, j = torch.randint(0, 2048, (32,)), torch.randint(0, 256, (32,))
        sigma = (torch.randn(32) * 1.2 - 1.2).exp()
        n = torch.randn(32, 1, 32, 32) * sigma.view(-1, 1, 1, 1)
        d, logit_fake, logit_real = net(fake[j] + n, sigma, fake_c[j], mode="train", real=real[i] + n,
                                        real_labels=real_c[i])
        l_disc = fastui.discriminator_loss(logit_fake, logit_real)
        l_fake = fastui.fake_score_loss(d.float(), fake[j], sigma)
        opt.zero_grad()
        (args.weight * l_disc + args.dsm * l_fake).backward()
        opt.step()
        if step % 10 == 0:
            print(f"{args.kind} weight {args.weight:g} dsm {args.dsm:g} step {step}: L_disc {l_disc.item():.4f} "
                  f"L_fake {l_fake.item():.1f}", flush=True)


if __name__ == "__main__":
    main()
