"""Discriminators for the density ratio and the GAN term (MATH §2-§3).

Default: the fake score's own encoder (``Denoiser.encode``) gives the bottleneck feature map and the logits are
its channel mean per spatial position ("patch"), so no extra parameters are trained. Alternative:
``ConvHead``, a small convolutional head on the same bottleneck with its own parameters.

Example::

    disc = Discriminator(fake_score)                     # shared encoder, channel-mean logits
    disc = Discriminator(fake_score, head=ConvHead(c))   # c = bottleneck channels
    logits = disc(x_t, sigma, labels)                    # [B, P] patch logits
    ell_mean = logits.mean(dim=1)                        # per-sample logit for the ratio
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv2d, GroupNorm
from .precond import logit_mean


def bottleneck_channels(net) -> int:
    """Channels of ``net.encode``'s output, from the architecture dict (no forward pass)."""
    kw = net.arch.get("kwargs", {})
    mult = kw.get("channel_mult", [1, 2, 2, 2] if net.arch["model"] == "SongUNet" else [1, 2, 3, 4])
    default_ch = 128 if net.arch["model"] == "SongUNet" else 192
    return int(kw.get("model_channels", default_ch)) * int(mult[-1])


class ConvHead(nn.Module):
    """Small conv head: GroupNorm -> SiLU -> 3x3 conv -> SiLU -> 1x1 conv to one logit per position.

    Shapes: features [B, C, h, w] -> logits [B, h*w] (float32).
    """

    def __init__(self, in_channels: int, hidden: int = 128):
        super().__init__()
        self.norm = GroupNorm(in_channels)
        self.conv0 = Conv2d(in_channels, hidden, 3, init_mode="kaiming_uniform")
        self.conv1 = Conv2d(hidden, 1, 1, init_mode="kaiming_uniform", init_weight=0.1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm(features)))
        return self.conv1(F.silu(h)).float().flatten(1)


class Discriminator(nn.Module):
    """Patch logits ell(x_t, sigma, c) from a denoiser's encoder (shared, not copied) and an optional head.

    Args:
        encoder_net: a ``fastui.networks`` Denoiser (typically the fake score).
        head: None (channel mean of the bottleneck) or a module mapping features to [B, P] logits.
    Shapes: x [B, C, H, W], sigma [B] -> [B, P] float32.
    """

    def __init__(self, encoder_net: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.encoder_net = encoder_net
        self.head = head

    def forward(self, x, sigma, class_labels=None):
        features = self.encoder_net.encode(x, sigma, class_labels)
        return logit_mean(features) if self.head is None else self.head(features)


__all__ = ["ConvHead", "Discriminator", "bottleneck_channels", "logit_mean"]
