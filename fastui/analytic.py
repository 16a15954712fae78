"""Analytic teachers: Gaussians and Gaussian mixtures with full covariances, in any dimension.

Under the forward process ``x_t = x_0 + sigma * eps`` a mixture ``p_0 = sum_k w_k N(m_k, C_k)`` stays a mixture,
``p_t = sum_k w_k N(m_k, C_k + sigma^2 I)``, so everything a distillation test needs is closed form:

    log p_t(x)  = logsumexp_k [log w_k + log N(x; m_k, C_k + sigma^2 I)]
    score(x)    = sum_k gamma_k(x) * (-(C_k + sigma^2 I)^-1 (x - m_k)),   gamma = softmax of the bracket above
    D(x; sigma) = x + sigma^2 score(x)                                  (Tweedie: the exact denoiser E[x_0 | x_t])

Each covariance is diagonalised once, ``C_k = U_k diag(lam_k) U_k^T``, so any per-sample sigma costs one projection
``U_k^T (x - m_k)`` (``O(B K d^2)``) instead of a factorisation per sample. Buffers are float64; inputs are computed
in their own floating dtype (at least float32).

Example:
    >>> import torch
    >>> from fastui.analytic import ring8
    >>> teacher = ring8()
    >>> x = teacher.sample(4, generator=torch.Generator().manual_seed(0))
    >>> teacher(x + 0.5 * torch.randn_like(x), torch.full((4,), 0.5)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GMMTeacher", "GaussianTeacher", "ring8"]


def _as_matrix_stack(covs: torch.Tensor, n: int, d: int) -> torch.Tensor:
    """Accept ``[K, d, d]``, ``[d, d]`` (shared; wins when ``K == d``), ``[K, d]`` (diagonals), ``[K]`` or a scalar
    (isotropic)."""
    covs = torch.as_tensor(covs, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    if covs.ndim == 0:
        return (covs * eye).expand(n, d, d).clone()
    if covs.ndim == 1 and covs.shape[0] == n:
        return covs[:, None, None] * eye
    if covs.ndim == 2 and covs.shape == (d, d):
        return covs.expand(n, d, d).clone()
    if covs.ndim == 2 and covs.shape == (n, d):
        return torch.diag_embed(covs)
    if covs.ndim == 3 and covs.shape == (n, d, d):
        return covs.clone()
    raise ValueError(f"covs must have shape [{n}, {d}, {d}], [{d}, {d}], [{n}, {d}] or [{n}], got {list(covs.shape)}")


class GMMTeacher(nn.Module):
    """A Gaussian-mixture data distribution with its exact denoiser, score, noisy log-density and sampler.

    Args:
        weights: ``[K]`` mixture weights (positive; normalised here).
        means: ``[K, d]`` component means.
        covs: ``[K, d, d]`` covariances (symmetric positive definite); also ``[d, d]`` shared, ``[K, d]`` diagonal,
            ``[K]`` or a scalar isotropic variance.
        event_shape: shape of one sample (default ``(d,)``); inputs ``[B, ...]`` must flatten to ``d``.
        sigma_data: reported like the networks' attribute (EDM's 0.5); the maths does not use it.

    Attributes:
        dim: ``d``. n_components: ``K``. label_dim: ``0`` (unconditional; ``class_labels`` may still pick a
        component, see :meth:`forward`).
    """

    def __init__(self, weights, means, covs, *, event_shape: Sequence[int] | None = None, sigma_data: float = 0.5):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape [K, d], got {list(means.shape)}")
        n, d = means.shape
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if weights.shape[0] != n or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {n} positive numbers, got {weights.tolist()}")
        covs = _as_matrix_stack(covs, n, d)
        covs = 0.5 * (covs + covs.transpose(-1, -2))  # exact symmetry for eigh
        lam, u = torch.linalg.eigh(covs)
        if not bool((lam > 0).all()):
            raise ValueError("every covariance must be positive definite")
        self.register_buffer("log_weights", (weights / weights.sum()).log())
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("eigvals", lam)  # [K, d]
        self.register_buffer("eigvecs", u)  # [K, d, d], columns are eigenvectors
        self.dim = d
        self.n_components = n
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not have {d} elements")
        self.label_dim = 0
        self.sigma_data = float(sigma_data)

    # ---------------------------------------------------------------------------------------------------------------
    # internals
    # ---------------------------------------------------------------------------------------------------------------

    def _prepare(self, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
        """Flatten ``x`` to ``[B, d]`` and ``sigma`` to ``[B]`` in a floating compute dtype."""
        if not torch.is_tensor(x) or x.ndim < 1:
            raise ValueError("x must be a tensor of shape [B, ...]")
        batch = x.shape[0]
        if x[0].numel() != self.dim:
            raise ValueError(f"x must flatten to [B, {self.dim}], got shape {list(x.shape)}")
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        xf = x.reshape(batch, self.dim).to(dtype)
        sig = torch.as_tensor(sigma, dtype=dtype, device=x.device)
        if sig.numel() == 1:
            sig = sig.reshape(1).expand(batch)
        elif sig.numel() == batch:
            sig = sig.reshape(batch)
        else:
            raise ValueError(f"sigma must be a scalar or have {batch} elements, got shape {list(sig.shape)}")
        return xf, sig, dtype

    def _components(self, x: torch.Tensor, sigma: torch.Tensor, dtype: torch.dtype):
        """Per-component ``log w_k + log N(x; m_k, C_k + sigma^2)`` ``[B, K]`` and scores ``[B, K, d]``."""
        u = self.eigvecs.to(dtype)
        lam = self.eigvals.to(dtype)[None] + (sigma * sigma)[:, None, None]  # [B, K, d]
        y = torch.einsum("kde,bkd->bke", u, x[:, None, :] - self.means.to(dtype)[None])  # U^T (x - m)
        log_comp = (self.log_weights.to(dtype)[None] - 0.5 * (y * y / lam).sum(-1) - 0.5 * lam.log().sum(-1)
                    - 0.5 * self.dim * math.log(2 * math.pi))
        scores = -torch.einsum("kde,bke->bkd", u, y / lam)  # -U diag(1/lam) U^T (x - m)
        return log_comp, scores

    @staticmethod
    def _label_index(class_labels: torch.Tensor, batch: int) -> torch.Tensor:
        labels = torch.as_tensor(class_labels)
        if labels.ndim == 2:  # one-hot
            labels = labels.argmax(1)
        return labels.reshape(batch).long()

    # ---------------------------------------------------------------------------------------------------------------
    # public API
    # ---------------------------------------------------------------------------------------------------------------

    def score(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        """Exact score ``grad_x log p_t(x)`` of the noisy marginal at noise level ``sigma``.

        Shapes: ``x``: ``[B, ...]`` flattening to ``d``; ``sigma``: scalar or ``[B]``. Returns ``x``'s shape.
        """
        xf, sig, dtype = self._prepare(x, sigma)
        log_comp, scores = self._components(xf, sig, dtype)
        if class_labels is None:
            gamma = torch.softmax(log_comp, dim=1)
        else:
            gamma = nn.functional.one_hot(self._label_index(class_labels, xf.shape[0]), self.n_components).to(dtype)
        return (gamma[:, :, None] * scores).sum(1).reshape(x.shape)

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        """Exact denoiser ``D(x; sigma) = E[x_0 | x_t = x] = x + sigma^2 score(x)``.

        Args:
            x: ``[B, ...]`` noisy inputs (flattening to ``d``).
            sigma: scalar or ``[B]`` noise levels.
            class_labels: ``None`` (the mixture), or component indices ``[B]`` (int) / one-hot ``[B, K]``: the
                denoiser of that component alone (a class-conditional teacher).

        Returns:
            ``[B, ...]`` like ``x`` (dtype float32 or float64).
        """
        xf, sig, _ = self._prepare(x, sigma)
        s = self.score(x, sigma, class_labels).reshape(xf.shape)
        return (xf + (sig * sig)[:, None] * s).reshape(x.shape)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """``log p_t(x)`` of the noisy marginal (``sigma = 0``: the data density). Returns ``[B]``."""
        xf, sig, dtype = self._prepare(x, sigma)
        log_comp, _ = self._components(xf, sig, dtype)
        return torch.logsumexp(log_comp, dim=1)

    def responsibilities(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """Posterior component probabilities ``[B, K]`` at noise level ``sigma``."""
        xf, sig, dtype = self._prepare(x, sigma)
        log_comp, _ = self._components(xf, sig, dtype)
        return torch.softmax(log_comp, dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None, *, sigma: float = 0.0,
               return_labels: bool = False, dtype: torch.dtype = torch.float32):
        """Draw ``n`` samples of ``p_t`` (``sigma = 0``: the data) on the buffers' device.

        Returns:
            ``[n, *event_shape]`` samples, and the component index ``[n]`` (int64) if ``return_labels``.
        """
        dev = self.means.device
        labels = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=dev)
        scale = (self.eigvals[labels] + sigma * sigma).sqrt()  # [n, d]
        x = self.means[labels] + torch.einsum("nde,ne->nd", self.eigvecs[labels], scale * noise)
        x = x.to(dtype).reshape(n, *self.event_shape)
        return (x, labels) if return_labels else x

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_components={self.n_components}"


class GaussianTeacher(GMMTeacher):
    """A single Gaussian ``N(mean, cov)`` (a one-component :class:`GMMTeacher`).

    Args:
        mean: ``[d]``.
        cov: ``[d, d]`` full covariance, ``[d]`` diagonal, or a scalar variance.
    """

    def __init__(self, mean, cov, **kwargs):
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        d = mean.shape[1]
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.ndim == 1:
            cov = torch.diag(cov)
        elif cov.ndim == 0:
            cov = cov * torch.eye(d, dtype=torch.float64)
        super().__init__(torch.ones(1), mean, cov.reshape(1, d, d), **kwargs)


def ring8(radius: float = 1.0, std: float = 0.1) -> GMMTeacher:
    """The 2-D toy: 8 equally weighted isotropic Gaussians on a circle of ``radius`` (mode k at angle 2 pi k / 8)."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GMMTeacher(torch.ones(8), means, torch.full((8,), float(std) ** 2))
