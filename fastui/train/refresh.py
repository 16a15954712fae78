"""A fresh discriminator head in the middle of a run (``discriminator.refresh_*``, conv head, torch backend).

Late in a long run the conv head stops telling the generator's samples from real images (``loss_disc`` back at chance,
2 ln 2 = 1.386), and with it the density-ratio weighting and the GAN term stop acting. A head re-initialised and first
trained alone against the current generator was the one change that moved the FID of such a run (session 9, by
hand with ``bench/fork_head.py``; ``bench/results/longer_config.md``). :func:`refresh_head` does the same inside the
engine:

1. draws ``refresh_pool`` real images (the next batches of the run's own data stream, whose position the checkpoint
   saved after the refresh holds) and as many one-step samples of the current (raw) generator (through
   :class:`~fastui.train.step.Draws` keyed by the iteration), all ranks together, and gathers both pools on every
   rank, so a resumed run draws what an uninterrupted one does;
2. builds a new :class:`~fastui.train.models.PixelHead` of the configured shape from a seed of ``(run.seed, iteration)``
   and trains it alone for ``refresh_steps`` Adam steps (``refresh_lr``, betas 0 / 0.999, ``refresh_batch`` real and
   generated images per step, the log-normal sigma of the fake-score step, one noise draw for both halves as in
   MATH §3); every rank runs the same steps on the same pools;
3. copies its weights into the engine's head in place (then broadcasts rank 0's: cuDNN's convolution gradients need
   not be bitwise the same on every GPU, and DDP never re-synchronises parameters) and drops the head's Adam state in
   the fake engine's optimizer (the fake score's parameters and state are untouched).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

import fastui

from .models import PixelHead
from .schedule import draw_seed, sample_sigma
from .step import Draws, StepContext, _generate

__all__ = ["REFRESH_SUB", "refresh_head", "train_head_alone"]

REFRESH_SUB = 1 << 20  # Draws sub-step index of a refresh's pool batches (a training iteration uses 0..k_fake)


def _pools(ctx: StepContext, it: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` real images and ``size`` one-step generator samples (fp32), drawn by all ranks together and gathered,
    so every rank holds the same two pools. Batch ``j`` of the pool is one global batch (``grad_accum`` micro-batches
    on every rank, rows in the order of ``batch.noise = "global"``), so with world-invariant draws (global noise,
    synthetic or analytic real images) the pools do not depend on the number of ranks either."""
    res = ctx.res
    batches = -(-size // res.global_size)
    reals, fakes = [], []
    for j in range(batches):
        for m in range(res.grad_accum):
            d = Draws(ctx, it, REFRESH_SUB + j, m)
            labels = ctx.g_labels(d)
            with torch.no_grad(), ctx.amp():
                # a copy: under CUDA graphs (compile_mode reduce-overhead) the output buffer is reused
                fakes.append(_generate(ctx, d, labels, ctx.gen.module).float().clone())
            reals.append(ctx.real(d)[0].float())
    return _gather(torch.stack(reals), size, ctx.shape), _gather(torch.stack(fakes), size, ctx.shape)


def _gather(mine: torch.Tensor, size: int, shape: tuple) -> torch.Tensor:
    """``[batches * accum, micro, *shape]`` of every rank -> the first ``size`` rows of all, in global row order."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world > 1:
        parts = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(parts, mine.contiguous())
        mine = torch.stack(parts, 1)  # [batches * accum, world, micro, ...]: micro-step, then rank, then row
    return mine.reshape(-1, *shape)[:size]


def train_head_alone(head: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, *, steps: int, batch: int,
                     lr: float, generator: torch.Generator, p_mean: float = -1.2, p_std: float = 1.2,
                     log_every: int = 0) -> tuple[float, float]:
    """Train ``head`` (``head(x_t, sigma) -> logits``) alone: ``steps`` Adam steps (``lr``, betas 0 / 0.999) of
    ``L_disc`` (MATH §3) on ``batch`` rows drawn from each pool, both noised with one log-normal sigma and noise draw.

    Returns:
        Mean ``L_disc`` of the first and of the last ``min(50, steps // 2)`` steps (NaN, NaN when ``steps`` is 0).
    """
    device = real.device
    shape = tuple(real.shape[1:])
    opt = torch.optim.Adam(head.parameters(), lr=lr, betas=(0.0, 0.999))
    window = min(50, max(1, steps // 2)) if steps else 0  # first and last overlap only when steps = 1
    first = torch.zeros((), device=device)
    last = torch.zeros((), device=device)
    recent: list[torch.Tensor] = []
    for step in range(steps):
        i = torch.randint(0, real.shape[0], (batch,), generator=generator, device=device)
        j = torch.randint(0, fake.shape[0], (batch,), generator=generator, device=device)
        sigma = sample_sigma("lognormal", batch, generator, device, p_mean=p_mean, p_std=p_std)
        noise = torch.randn((batch, *shape), generator=generator, device=device)
        noise = noise * sigma.reshape(-1, *([1] * len(shape)))
        loss = fastui.discriminator_loss(head(fake[j] + noise, sigma), head(real[i] + noise, sigma))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss = loss.detach()
        if step < window:
            first += loss
        if step >= steps - window:
            last += loss
        if log_every:
            recent = (recent + [loss])[-window:]
            if (step + 1) % log_every == 0 or step + 1 == steps:
                print(f"head alone: step {step + 1}/{steps}: L_disc {torch.stack(recent).mean().item():.4f} "
                      f"(last {len(recent)})", flush=True)
    if not window:
        return float("nan"), float("nan")
    return first.item() / window, last.item() / window


def refresh_head(ctx: StepContext, it: int) -> dict:
    """Replace the fake engine's conv head by a fresh one pre-trained on the current generator (collective).

    Returns:
        ``{"loss_first", "loss_last"}``: mean ``L_disc`` of the first and the last (up to 50) pre-training steps
        (NaN when ``refresh_steps`` is 0), and ``"seconds"``.
    """
    t0 = time.perf_counter()
    cfg, dc = ctx.cfg, ctx.cfg.discriminator
    head = getattr(ctx.fake.module, "head", None)
    if head is None:
        raise RuntimeError("discriminator refresh: the fake engine has no conv head (discriminator.kind = 'conv')")
    device, shape = ctx.device, ctx.shape
    real, fake = _pools(ctx, it, dc.refresh_pool)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(draw_seed(cfg.run.seed, it, REFRESH_SUB, 1))
        fresh = PixelHead(shape, dc.channels, dc.depth).to(device)
    g = torch.Generator(device=device).manual_seed(draw_seed(cfg.run.seed, it, REFRESH_SUB, 2))
    first, last = train_head_alone(fresh, real, fake, steps=dc.refresh_steps, batch=dc.refresh_batch,
                                   lr=dc.refresh_lr, generator=g, p_mean=cfg.loss.p_mean, p_std=cfg.loss.p_std)
    world = dist.get_world_size() if dist.is_initialized() else 1
    with torch.no_grad():
        for p, q in zip(head.parameters(), fresh.parameters()):
            p.copy_(q)
            if world > 1:
                dist.broadcast(p, 0)
    state = ctx.fake.optimizer.state
    for p in head.parameters():
        state.pop(p, None)  # Adam starts the head's moments and step count afresh
        p.grad = None
    return {"loss_first": first, "loss_last": last, "seconds": time.perf_counter() - t0}
