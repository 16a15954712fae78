"""Noise-level samplers (MATH §2, §6), the image-count schedule (MATH §7) and the EMA decay.

All samplers take a ``torch.Generator`` so every draw is a function of the counters (exact resume, world-size
invariant draws with ``batch.noise = "global"``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["Phase", "draw_seed", "ema_beta", "karras_sigma", "lr_scale", "phase", "sample_sigma"]


def karras_sigma(u: torch.Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Karras levels ``(smax^(1/rho) + (1-u) (smin^(1/rho) - smax^(1/rho)))^rho`` (MATH §2): u = 0 -> smin,
    u = 1 -> smax.

    Shapes: ``u`` any shape in [0, 1]; returns the same shape.
    """
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (a + (1.0 - u) * (b - a)) ** rho


def sample_sigma(kind: str, n: int, generator: torch.Generator, device, *, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                 t_max=800.0, p_mean=-1.2, p_std=1.2) -> torch.Tensor:
    """Draw ``n`` noise levels (fp32, on ``device``).

    Args:
        kind: ``"karras"``: ``u ~ U[0, t_max/1000]`` into :func:`karras_sigma` (MATH §2: t_max = 800 gives sigma in
            [0.002, 24.4]);
            ``"karras_index"``: a uniform integer index in [20, 980] of 1000 Karras levels, ``u = index / 999``
            (DMD2, f-distill);
            ``"lognormal"``: ``ln sigma ~ N(p_mean, p_std^2)``.
        generator: the draw's generator (on ``device``).

    Returns:
        ``[n]`` fp32.
    """
    if kind == "karras":
        u = torch.rand(n, generator=generator, device=device) * (t_max / 1000.0)
        return karras_sigma(u, sigma_min, sigma_max, rho)
    if kind == "karras_index":
        idx = torch.randint(20, 981, (n,), generator=generator, device=device).float()
        return karras_sigma(idx / 999.0, sigma_min, sigma_max, rho)
    if kind == "lognormal":
        return (torch.randn(n, generator=generator, device=device) * p_std + p_mean).exp()
    raise ValueError(f"unknown sigma schedule {kind!r}; choose karras, karras_index or lognormal")


def ema_beta(images_done: int, batch_images: int, halflife_images: float, rampup: float) -> float:
    """Per-step EMA decay for a half-life in images with EDM's ramp-up (half-life <= rampup x images so far)."""
    halflife = halflife_images
    if rampup > 0:
        halflife = min(halflife, images_done * rampup)
    return 0.5 ** (batch_images / max(halflife, 1e-8))


def lr_scale(progress: float, start: float, final: float) -> float:
    """Learning-rate multiplier at ``progress`` (fraction of the run's budget done): 1 until ``start``, then a
    half cosine down to ``final`` at 1 (and ``final`` after it)."""
    if final >= 1.0 or progress <= start:
        return 1.0
    t = min(1.0, (progress - start) / max(1.0 - start, 1e-12))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))


class Phase:
    """What one iteration does, from the image counter (host integers: no device sync)."""

    __slots__ = ("generator_step", "ratio_on")

    def __init__(self, generator_step: bool, ratio_on: bool):
        self.generator_step = generator_step
        self.ratio_on = ratio_on


def phase(images_done: int, warmup_images: int, ratio_start_images: int) -> Phase:
    """Generator steps after ``warmup_images``; GAN/ratio branches after ``ratio_start_images`` (MATH §7)."""
    return Phase(images_done >= warmup_images, images_done >= ratio_start_images)


def draw_seed(seed: int, *counters: int) -> int:
    """A 63-bit seed for one draw from the base seed and counters (iteration, sub-step, micro-step, stream, rank)."""
    h = seed & 0xFFFFFFFFFFFF
    for c in counters:
        h = (h * 1_000_003 + int(c) + 0x9E3779B97F4A7C15) % (2**63 - 1)
    return int(h) or 1

