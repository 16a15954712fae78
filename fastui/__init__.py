"""fastui: one-step diffusion distillation with the Uni-Instruct family of losses.

Public API for users dropping the losses into their own trainers::

    from fastui import score_distill_loss, ScoreDistillLoss

``score_distill_loss``, ``preset_loss`` and ``fake_score_loss`` dispatch to the fastest available backend
(cuda -> triton -> cpp -> torch; ``FASTUI_BACKEND`` overrides). Their pure-torch references, the specification,
live in :mod:`fastui.functional`.
"""

from . import divergences, ops
from .functional import discriminator_loss, gan_generator_loss, log_density_ratio
from .losses import FakeScoreLoss, ScoreDistillLoss
from .ops import fake_score_loss, preset_loss, score_distill_loss

__version__ = "0.1.0"

__all__ = [
    "FakeScoreLoss",
    "ScoreDistillLoss",
    "discriminator_loss",
    "divergences",
    "fake_score_loss",
    "gan_generator_loss",
    "log_density_ratio",
    "ops",
    "preset_loss",
    "score_distill_loss",
]
