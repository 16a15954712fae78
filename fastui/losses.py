"""``nn.Module`` wrappers of the fused losses (the last rung of the ladder, next to :mod:`fastui.ops`).

Example:
    >>> import torch
    >>> from fastui import ScoreDistillLoss
    >>> crit = ScoreDistillLoss(divergence="fkl")
    >>> x = torch.randn(4, 3, 8, 8, requires_grad=True)
    >>> crit(x, torch.randn_like(x), torch.randn_like(x), sigma=torch.full((4,), 0.5),
    ...      log_ratio=torch.zeros(4)).backward()
"""

from __future__ import annotations

import torch
from torch import nn

from . import ops
from .functional import Weighting

__all__ = ["FakeScoreLoss", "ScoreDistillLoss"]


class ScoreDistillLoss(nn.Module):
    """The unified generator loss of MATH §5 as a module; the constructor takes the keyword arguments of
    :func:`fastui.score_distill_loss`, ``forward`` its tensors.

    Args:
        divergence: registry name or :class:`~fastui.divergences.Divergence` (default ``"rkl"``).
        weighting: ``"sid"``, ``"none"`` or a ``[B]`` tensor.
        log_ratio_clamp: clamp of ``|log r|``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        lambda_g: scale of the ``"sid"`` weighting.
        c_clip: optional clip of ``|w_i c_i|``.
        return_stats: also return the stats dict.
        backend: explicit backend, or ``None`` (``FASTUI_BACKEND`` / automatic).
    """

    def __init__(self, *, divergence="rkl", weighting: Weighting = "sid", log_ratio_clamp: float = 10.0,
                 reduction: str = "mean", lambda_g: float = 100.0, c_clip: float | None = None,
                 return_stats: bool = False, backend: str | None = None):
        super().__init__()
        self.kwargs = {"divergence": divergence, "weighting": weighting, "log_ratio_clamp": log_ratio_clamp,
                           "reduction": reduction, "lambda_g": lambda_g, "c_clip": c_clip, "return_stats": return_stats,
                           "backend": backend}

    def forward(self, x_g: torch.Tensor, d_teacher: torch.Tensor, d_fake: torch.Tensor, sigma,
                log_ratio: torch.Tensor | None = None):
        """Shapes: ``x_g, d_teacher, d_fake``: ``[B, ...]``; ``sigma``, ``log_ratio``: ``[B]``. Returns the loss."""
        return ops.score_distill_loss(x_g, d_teacher, d_fake, sigma, log_ratio, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items() if not torch.is_tensor(v))


class FakeScoreLoss(nn.Module):
    """Fake-score DSM loss of MATH §3 as a module (:func:`fastui.ops.fake_score_loss`).

    Args:
        sigma_data: EDM's ``sigma_data``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        return_stats: also return the stats dict.
        backend: explicit backend, or ``None``.
    """

    def __init__(self, *, sigma_data: float = 0.5, reduction: str = "mean", return_stats: bool = False,
                 backend: str | None = None):
        super().__init__()
        self.kwargs = {"sigma_data": sigma_data, "reduction": reduction, "return_stats": return_stats,
                       "backend": backend}

    def forward(self, d_fake: torch.Tensor, x_g: torch.Tensor, sigma):
        """Shapes: ``d_fake, x_g``: ``[B, ...]``; ``sigma``: ``[B]`` or scalar. Returns the loss."""
        return ops.fake_score_loss(d_fake, x_g, sigma, **self.kwargs)
