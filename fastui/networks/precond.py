"""Preconditioned denoisers D(x; sigma, c) = c_skip x + c_out F(c_in x, c_noise, c)  (MATH §1).

``precond="edm"`` (EDM, Karras et al. 2022):
    c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2),
    c_noise = ln(sigma)/4.
``precond="vp"`` (the VP teachers edm-cifar10-32x32-*-vp; sd does not enter):
    c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2+1), c_noise = (M-1) t(sigma),
    t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1+sigma^2)) - beta_min) / beta_d   (inverse of the VP schedule
    sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1)).

The wrapper owns no parameters: the backbone sits under ``.model`` so EDM state dicts (``model.*``) load as is.
Coefficients and the output are float32 whatever the backbone dtype (bf16 autocast or bf16 weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PRECONDS = ("edm", "vp")
VP_DEFAULTS = {"beta_d": 19.9, "beta_min": 0.1, "M": 1000, "epsilon_t": 1e-5}


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = 0.5):
    """EDM preconditioning coefficients (MATH §1).

    Args:
        sigma: noise levels, any shape, float.
        sigma_data: data standard deviation sd.
    Returns:
        (c_skip, c_out, c_in, c_noise), each shaped like ``sigma``.
    """
    sd2 = sigma_data**2
    denom = sigma**2 + sd2
    return sd2 / denom, sigma * sigma_data / denom.sqrt(), 1 / denom.sqrt(), sigma.log() / 4


def vp_sigma_to_t(sigma: torch.Tensor, beta_d: float = 19.9, beta_min: float = 0.1) -> torch.Tensor:
    """Inverse of the VP schedule: t such that sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1)."""
    return ((beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)).sqrt() - beta_min) / beta_d


def vp_t_to_sigma(t: float, beta_d: float = 19.9, beta_min: float = 0.1) -> float:
    """The VP schedule sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1) for a Python float t."""
    return math.sqrt(math.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_coefficients(sigma: torch.Tensor, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000):
    """VP preconditioning coefficients (c_skip, c_out, c_in, c_noise), each shaped like ``sigma``."""
    one = torch.ones_like(sigma)
    return one, -sigma, 1 / (sigma**2 + 1).sqrt(), (M - 1) * vp_sigma_to_t(sigma, beta_d, beta_min)


class Denoiser(nn.Module):
    """A preconditioned denoiser around a U-Net backbone (``fastui.networks.build`` makes these).

    Attributes: ``arch`` (the JSON dict that rebuilds it), ``img_resolution``, ``img_channels``, ``label_dim``,
    ``sigma_data``, ``precond``, ``model`` (the backbone; EDM's parameter names under it).
    """

    def __init__(self, model: nn.Module, arch: dict, img_resolution: int, img_channels: int, label_dim: int = 0,
                 sigma_data: float = 0.5, precond: str = "edm", precond_kwargs: dict | None = None):
        super().__init__()
        if precond not in PRECONDS:
            raise ValueError(f"unknown precond {precond!r}; valid: {', '.join(PRECONDS)}")
        self.model = model
        self.arch = arch
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.sigma_data = float(sigma_data)
        self.precond = precond
        self.precond_kwargs = dict(VP_DEFAULTS, **(precond_kwargs or {})) if precond == "vp" else {}
        if precond == "vp":
            kw = self.precond_kwargs
            self.sigma_min = (vp_t_to_sigma(kw["epsilon_t"], kw["beta_d"], kw["beta_min"]))
            self.sigma_max = (vp_t_to_sigma(1.0, kw["beta_d"], kw["beta_min"]))
        else:
            self.sigma_min, self.sigma_max = 0.0, float("inf")

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) for float32 ``sigma`` of any shape."""
        if self.precond == "vp":
            kw = self.precond_kwargs
            return vp_coefficients(sigma, kw["beta_d"], kw["beta_min"], kw["M"])
        return edm_coefficients(sigma, self.sigma_data)

    def _labels(self, class_labels, batch, device):
        if self.label_dim == 0:
            return None
        if class_labels is None:
            return torch.zeros(batch, self.label_dim, device=device)
        if class_labels.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8) and class_labels.ndim == 1:
            return F.one_hot(class_labels.long(), self.label_dim).float()
        return class_labels.float().reshape(-1, self.label_dim)

    def _prepare(self, x, sigma, class_labels):
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        dtype = self.model.map_layer0.weight.dtype
        x_in = (c_in.view(-1, 1, 1, 1) * x).to(dtype)
        return x, c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1), x_in, c_noise, \
            self._labels(class_labels, x.shape[0], x.device)

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        """Denoised estimate D(x; sigma, c).

        Args:
            x: noisy images [B, C, H, W].
            sigma: [B], [B,1,1,1] or a scalar (float or tensor).
            class_labels: one-hot [B, label_dim], int64 [B], or None (zeros for conditional nets).
            augment_labels: optional [B, augment_dim] (EDM's augmentation conditioning; None = no augmentation).
        Returns:
            float32 [B, C, H, W].
        """
        x, c_skip, c_out, x_in, c_noise, labels = self._prepare(x, sigma, class_labels)
        f = self.model(x_in, c_noise, labels, augment_labels)
        return c_skip * x + c_out * f.float()

    def encode(self, x, sigma, class_labels=None):
        """Bottleneck feature map of the backbone's encoder for the preconditioned input.

        Shapes: x [B, C, H, W] -> [B, C', H / 2^(L-1), W / 2^(L-1)] (L = len(channel_mult)).
        """
        _, _, _, x_in, c_noise, labels = self._prepare(x, sigma, class_labels)
        return self.model.encode(x_in, c_noise, labels)

    def set_checkpointing(self, enabled: bool = True) -> Denoiser:
        """Turn activation checkpointing of every U-Net block on or off (active whenever grad is enabled)."""
        self.model.use_checkpoint = bool(enabled)
        return self

    def extra_repr(self) -> str:
        params = sum(p.numel() for p in self.parameters())
        return f"precond={self.precond}, sigma_data={self.sigma_data}, params={params / 1e6:.2f}M"


def logit_mean(features: torch.Tensor) -> torch.Tensor:
    """Shared-encoder discriminator logits: channel mean of the bottleneck map (MATH §2), per patch.

    Shapes: [B, C, h, w] -> [B, h*w] (float32).
    """
    return features.float().mean(dim=1).flatten(1)


__all__ = [
    "PRECONDS",
    "VP_DEFAULTS",
    "Denoiser",
    "edm_coefficients",
    "logit_mean",
    "vp_coefficients",
    "vp_sigma_to_t",
    "vp_t_to_sigma",
]
