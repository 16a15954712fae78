"""A small EDM-preconditioned MLP denoiser for vector data (analytic teachers: the 8-Gaussian ring).

Arch dict (contract-2 style, JSON-serialisable)::

    {"model": "MLP", "dim": 2, "hidden": 128, "layers": 3, "label_dim": 0, "sigma_data": 0.5}

``forward(x, sigma, class_labels=None)`` is ``c_skip x + c_out F(c_in x, c_noise, c)`` (MATH §1); ``encode`` returns
the last hidden layer as a ``[B, hidden, 1, 1]`` map so the shared-encoder discriminator works unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLPDenoiser", "mlp_arch"]


def mlp_arch(dim: int = 2, hidden: int = 128, layers: int = 3, label_dim: int = 0, sigma_data: float = 0.5) -> dict:
    """The arch dict of :class:`MLPDenoiser`."""
    return {"model": "MLP", "dim": dim, "hidden": hidden, "layers": layers, "label_dim": label_dim,
            "sigma_data": sigma_data}


class MLPDenoiser(nn.Module):
    """EDM-preconditioned MLP ``D(x; sigma, c)`` on ``[B, dim]`` inputs (Fourier features of ``c_noise``)."""

    def __init__(self, arch: dict):
        super().__init__()
        self.arch = dict(arch)
        self.dim = int(arch["dim"])
        self.label_dim = int(arch.get("label_dim", 0))
        self.sigma_data = float(arch.get("sigma_data", 0.5))
        self.img_resolution, self.img_channels = 0, self.dim
        hidden, layers = int(arch.get("hidden", 128)), int(arch.get("layers", 3))
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(64.0), 8)), persistent=False)
        width_in = self.dim + 16 + self.label_dim
        self.inp = nn.Linear(width_in, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, self.dim)
        self.use_checkpoint = False

    def _features(self, x, sigma, class_labels):
        x = x.float().reshape(x.shape[0], -1)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        sd2 = self.sigma_data**2
        c_in = (sigma**2 + sd2).rsqrt()
        c_noise = sigma.clamp_min(1e-20).log() / 4
        emb = c_noise[:, None] * self.freqs[None]
        parts = [c_in[:, None] * x, emb.sin(), emb.cos()]
        if self.label_dim:
            if class_labels is None:
                labels = torch.zeros(x.shape[0], self.label_dim, device=x.device)
            elif class_labels.ndim == 1:
                labels = F.one_hot(class_labels.long(), self.label_dim).float()
            else:
                labels = class_labels.float()
            parts.append(labels)
        h = F.silu(self.inp(torch.cat(parts, 1).to(self.inp.weight.dtype)))
        for layer in self.hidden:
            h = F.silu(layer(h))
        return x, sigma, h

    def forward(self, x, sigma, class_labels=None):
        """Denoised estimate; ``x`` ``[B, dim]`` (or flattening to it), output ``[B, dim]`` fp32."""
        shape = x.shape
        x, sigma, h = self._features(x, sigma, class_labels)
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        return (c_skip[:, None] * x + c_out[:, None] * self.out(h).float()).reshape(shape)

    def encode(self, x, sigma, class_labels=None):
        """Last hidden layer as a ``[B, hidden, 1, 1]`` feature map (shared-encoder discriminator)."""
        return self._features(x, sigma, class_labels)[2][:, :, None, None]

    def set_checkpointing(self, enabled: bool = True) -> MLPDenoiser:
        """No-op switch (the MLP is too small to need it), kept for a uniform interface."""
        self.use_checkpoint = bool(enabled)
        return self
