"""One training iteration (MATH §3, §5-§7): ``k_fake`` fake-score(+discriminator) steps, then a generator step.

No host syncs: statistics are accumulated into device tensors (:class:`Stats`) and read only by the logger every
``log_every`` iterations. Every random draw comes from a generator seeded by the counters (:func:`Draws`), so a
resumed run draws exactly what an uninterrupted one would; ``batch.noise = "global"`` draws each micro-step's rows
for the whole world and keeps this rank's slice, which makes runs independent of the number of ranks.
The loss maths lives in :mod:`fastui.functional` / :mod:`fastui.ops`; this module only wires networks to losses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

import fastui

from .config import Config, Resolved
from .schedule import Phase, draw_seed, sample_sigma

__all__ = ["Draws", "Stats", "StepContext", "train_iteration"]


class Stats:
    """Sums of device scalars since the last flush; :meth:`flush` is the only host sync (every ``log_every``)."""

    def __init__(self, device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        v = value.detach().float().reshape(())
        self.sums[name] = self.sums[name] + v if name in self.sums else v.clone()
        self.counts[name] = self.counts.get(name, 0) + 1

    def flush(self, reduce: bool = True) -> dict[str, float]:
        """Means over the window (and over ranks), as floats. Counters (``n_*``) are summed, not averaged."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        vec = torch.stack([self.sums[n] for n in names])
        if reduce and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(vec)
            world = dist.get_world_size()
        else:
            world = 1
        values = vec.cpu().tolist()  # the host sync
        out = {}
        for n, v in zip(names, values):
            out[n] = v if n.startswith("n_") else v / (self.counts[n] * world)
        self.sums.clear()
        self.counts.clear()
        return out


class Draws:
    """Random draws of one micro-step, reproducible from ``(seed, iteration, sub-step, micro-step)``.

    ``batch.noise = "global"``: every draw covers the whole global batch (``micro x world x grad_accum`` rows, one
    generator per sub-step) and this micro-step keeps its rows, so results depend neither on the number of ranks
    nor on the accumulation split. ``"per_rank"``: each rank draws only its own ``micro`` rows.
    """

    def __init__(self, ctx: StepContext, iteration: int, sub: int, micro: int):
        self.ctx = ctx
        res = ctx.res
        if ctx.cfg.batch.noise == "global":
            key = (iteration, sub)
            self.rows = res.global_size
            start = (micro * res.world + ctx.rank) * res.micro
            self.sl = slice(start, start + res.micro)
        else:
            key = (iteration, sub, micro, 7919 + ctx.rank)
            self.rows, self.sl = res.micro, slice(None)
        self.gen = torch.Generator(device=ctx.device).manual_seed(draw_seed(ctx.cfg.run.seed, *key))

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a draw of ``self.rows`` rows."""
        return rows[self.sl]

    def randn(self, shape) -> torch.Tensor:
        return torch.randn((self.rows, *shape), generator=self.gen, device=self.ctx.device)[self.sl]

    def uniform(self, shape, low=-1.0, high=1.0) -> torch.Tensor:
        u = torch.rand((self.rows, *shape), generator=self.gen, device=self.ctx.device)[self.sl]
        return low + (high - low) * u

    def labels(self, num: int) -> torch.Tensor | None:
        if num == 0:
            return None
        return torch.randint(0, num, (self.rows,), generator=self.gen, device=self.ctx.device)[self.sl]

    def sigma(self, kind: str) -> torch.Tensor:
        lc = self.ctx.cfg.loss
        s = sample_sigma(kind, self.rows, self.gen, self.ctx.device, sigma_min=lc.sigma_min, sigma_max=lc.sigma_max,
                         rho=lc.rho, t_max=lc.t_max, p_mean=lc.p_mean, p_std=lc.p_std)
        return s[self.sl]


@dataclass
class StepContext:
    """Everything one iteration needs (built once by :mod:`fastui.train.run`).

    Attributes:
        real: ``real(draws) -> (images [micro, *shape] in [-1, 1], labels [micro] or None)``; None when no real data
            is needed.
        data_labels: ``() -> labels [micro]`` for ``batch.labels = "data"``.
    """

    cfg: Config
    res: Resolved
    teacher: Callable
    gen: object
    fake: object
    shape: tuple
    label_dim: int
    device: torch.device
    rank: int
    stats: Stats
    real: Callable | None = None
    data_labels: Callable | None = None
    autocast: torch.dtype | None = None

    def amp(self):
        """Autocast (bf16 or fp16) for the forwards when asked; the losses compute in fp32 themselves."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def expand(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.reshape(-1, *([1] * len(self.shape)))

    def g_labels(self, draws: Draws):
        if self.label_dim == 0:
            return None
        if self.cfg.batch.labels == "data" and self.data_labels is not None:
            return self.data_labels()
        return draws.labels(self.label_dim)


def _generate(ctx: StepContext, draws: Draws, labels, module) -> torch.Tensor:
    """``x_g = G(sigma_init z; sigma_init, c)`` (MATH §2)."""
    s0 = ctx.cfg.model.sigma_init
    z = draws.randn(ctx.shape)
    sigma = torch.full((z.shape[0],), s0, device=ctx.device)
    return module(s0 * z, sigma, labels).float()


def fake_micro_step(ctx: StepContext, it: int, sub: int, micro: int, shared: _Sample | None = None) -> None:
    """DSM of the fake score on detached generator samples, plus the discriminator when it is used (MATH §3).

    ``shared``: the generator step's samples (``schedule.share_samples``), used detached instead of a draw of its own.
    """
    d = Draws(ctx, it, 1 + sub, micro)
    if shared is None:
        labels = ctx.g_labels(d)
        with torch.no_grad(), ctx.amp():
            x_g = _generate(ctx, d, labels, ctx.gen.module)
    else:
        labels, x_g = shared.labels, shared.x_g.detach()
    sigma = d.sigma("lognormal")
    n = d.randn(ctx.shape)
    x_t = x_g + ctx.expand(sigma) * n
    real_t = real_labels = None
    if ctx.res.needs_disc:
        real, real_labels = ctx.real(d)
        if ctx.label_dim and real_labels is None:
            real_labels = labels
        real_t = real + ctx.expand(sigma) * n  # same sigma and noise as the fake batch (MATH §3)
    with ctx.amp():
        d_fake, logit_fake, logit_real = ctx.fake(x_t, sigma, labels, mode="train", real=real_t,
                                                  real_labels=real_labels)
    loss_fake, st = fastui.fake_score_loss(d_fake.float(), x_g, sigma, return_stats=True)
    loss = loss_fake
    ctx.stats.add("loss_fake", loss_fake)
    ctx.stats.add("n_nonfinite_fake", st["n_nonfinite"])
    if logit_fake is not None:
        loss_disc = fastui.discriminator_loss(logit_fake, logit_real)
        loss = loss + ctx.cfg.discriminator.weight * loss_disc
        ctx.stats.add("loss_disc", loss_disc)
    ctx.fake.backward(loss)
    ctx.fake.step()


@dataclass
class _Sample:
    """The generator step's draws and samples ``x_g`` (with their graph), made before the fake step when shared."""

    draws: Draws
    labels: torch.Tensor | None
    x_g: torch.Tensor


def _generator_sample(ctx: StepContext, it: int, micro: int) -> _Sample:
    d = Draws(ctx, it, 0, micro)
    labels = ctx.g_labels(d)
    with ctx.amp():
        x_g = _generate(ctx, d, labels, ctx.gen)
    return _Sample(d, labels, x_g)


def generator_micro_step(ctx: StepContext, it: int, micro: int, ph: Phase, sample: _Sample | None = None) -> None:
    """The distillation loss of the method (+ GAN term) through both denoisers' inputs (MATH §5, §6).

    ``sample``: the generator's samples when they were drawn before the fake step (``schedule.share_samples``); the
    draws that follow (sigma, noise) are the same either way.
    """
    res = ctx.res
    sample = sample or _generator_sample(ctx, it, micro)
    d, labels, x_g = sample.draws, sample.labels, sample.x_g
    sigma = d.sigma(res.sigma_g)
    eps = d.randn(ctx.shape)
    x_t = x_g + ctx.expand(sigma) * eps
    want_logits = ph.ratio_on and (res.use_ratio or res.gan)
    # The fake score stays frozen (no parameter gradient, eval mode) until the backward is done: activation
    # checkpointing recomputes its blocks there and must see the same module state as in the forward.
    with ctx.fake.frozen() as fake:
        with ctx.amp():
            d_fake = fake(x_t, sigma, labels, mode="denoise").float()
            logits = fake(x_t, sigma, labels, mode="logits") if want_logits else None
            d_teacher = ctx.teacher(x_t, sigma, labels).float()
        loss = _generator_loss(ctx, ph, x_g, d_teacher, d_fake, sigma, logits)
        ctx.gen.backward(loss)
    ctx.gen.step()


def _generator_loss(ctx: StepContext, ph: Phase, x_g, d_teacher, d_fake, sigma, logits) -> torch.Tensor:
    """The method's distillation loss (+ GAN term), statistics on the device."""
    res, lc = ctx.res, ctx.cfg.loss
    log_ratio = None
    if res.use_ratio and ph.ratio_on:
        uni_clip = res.ratio_clip if res.preset.form == "uni" else None
        log_ratio = fastui.log_density_ratio(logits, clamp=lc.log_ratio_clamp, clip=uni_clip,
                                             self_normalize=lc.self_normalize, all_reduce=True)
        r = log_ratio.exp()
        ctx.stats.add("ratio_mean", r.mean())
        ctx.stats.add("ratio_std", r.std(unbiased=False))
        ctx.stats.add("log_ratio_abs", log_ratio.abs().mean())
    extra = {}
    if res.preset.form == "sid":
        extra["alpha"] = res.alpha
    elif res.preset.form == "fdistill" and res.ratio_clip is not None:
        extra["ratio_clip"] = res.ratio_clip
    elif res.preset.form == "uni":
        extra["log_ratio_clamp"] = lc.log_ratio_clamp
        if lc.c_clip > 0:
            extra["c_clip"] = lc.c_clip
    loss_g, st = fastui.preset_loss(res.preset, x_g, d_teacher, d_fake, sigma, log_ratio,
                                    divergence=res.divergence or None, lambda_g=lc.lambda_g, return_stats=True,
                                    **extra)
    loss = loss_g
    ctx.stats.add("loss_g", loss_g)
    ctx.stats.add("n_nonfinite_g", st["n_nonfinite"])
    if res.gan and ph.ratio_on:
        loss_gan = res.gan_weight * fastui.gan_generator_loss(logits, x_g, d_teacher, weight=lc.lambda_gan)
        loss = loss + loss_gan
        ctx.stats.add("loss_gan", loss_gan)
    return loss


def train_iteration(ctx: StepContext, it: int, ph: Phase) -> None:
    """``k_fake`` fake steps then (after warm-up) one generator step, each over ``grad_accum`` micro-batches.

    With ``schedule.share_samples`` (one fake step, one micro-step: checked by the config) the generator's samples of
    the generator step are drawn first and the fake step trains on them detached: the same updates as two draws
    whose latents and labels coincide, one generator forward fewer. Before the first generator step (warm-up) the
    fake step draws its own.
    """
    if ctx.cfg.schedule.share_samples and ph.generator_step:
        sample = _generator_sample(ctx, it, 0)
        fake_micro_step(ctx, it, 0, 0, shared=sample)
        generator_micro_step(ctx, it, 0, ph, sample=sample)
        return
    for sub in range(ctx.res.k_fake):
        for micro in range(ctx.res.grad_accum):
            fake_micro_step(ctx, it, sub, micro)
    if ph.generator_step:
        for micro in range(ctx.res.grad_accum):
            generator_micro_step(ctx, it, micro, ph)
