"""fastui: one-step diffusion distillation with the Uni-Instruct family of losses.

Public API for users dropping the losses into their own trainers::

    from fastui import score_distill_loss, ScoreDistillLoss

See README.md and ../docs for the mathematics (MATH.md) and the design.
"""

from . import divergences
from .functional import (
    discriminator_loss,
    fake_score_loss,
    gan_generator_loss,
    log_density_ratio,
    preset_loss,
)

__version__ = "0.1.0"

try:  # the dispatched (fused) versions, once the kernels layer exists
    from .ops import score_distill_loss  # noqa: F401
    from .losses import ScoreDistillLoss  # noqa: F401
except ImportError:  # pragma: no cover - reference fallback
    from .functional import score_distill_loss  # noqa: F401

__all__ = [
    "divergences",
    "score_distill_loss",
    "ScoreDistillLoss",
    "preset_loss",
    "fake_score_loss",
    "discriminator_loss",
    "gan_generator_loss",
    "log_density_ratio",
]
