"""2-D toy distillation on the CPU: an analytic 8-Gaussian ring teacher, MLP generator, MLP fake score.

``python -m fastui.toy --divergence fkl`` (or ``fastui toy ...``) distils the exact ring teacher
(:func:`fastui.analytic.ring8`) into a one-step MLP generator with fastui's losses and the alternating scheme of
MATH §7, then writes a PNG of teacher vs student samples and prints the energy distance to the teacher and how many
of the 8 modes hold at least 5% of the student's samples. A run takes about 60 s of CPU time on one core.

The pieces mirror the image recipe at a small scale:

- the *fake score* is an EDM-preconditioned MLP denoiser ``D(x, sigma)`` with a discriminator head on its last
  hidden layer (the shared-encoder discriminator of MATH §2); it is first fitted to the teacher by denoising score
  matching (the toy stand-in for "initialised from the teacher"), then tracks the student by DSM on its samples;
- the *generator* is the same network applied once, ``x_g = G(sigma_init z; sigma_init)``, initialised from that fit;
- per iteration: ``k_fake`` fake-score (+discriminator) steps, then one generator step; Adam with ``beta1 = 0``.

The GAN generator term of ``dmd2``/``sida``/``uni`` is not used: the toy compares the distillation losses alone.

Example:
    >>> from fastui.toy import ToyConfig, train
    >>> result = train(ToyConfig(method="uni", divergence="fkl", steps=50))  # doctest: +SKIP
    >>> result.modes_covered  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

import fastui
from fastui import divergences as _div
from fastui.analytic import GMMTeacher, ring8
from fastui.functional import dmd_normalizer

__all__ = ["ToyConfig", "ToyDenoiser", "ToyResult", "energy_distance", "main", "mode_coverage", "train"]

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


@dataclass
class ToyConfig:
    """Hyper-parameters of the toy (one budget for every method/divergence).

    Attributes:
        method: preset name (``uni``, ``sid``, ``dmd``, ``di``, ``fdistill``, ...; see :mod:`fastui.divergences`).
        divergence: divergence of ``uni`` / ``fdistill`` (ignored by the other methods).
        steps: generator steps (each preceded by the preset's ``k_fake`` fake-score steps).
        seed: seed of every random draw.
        batch: samples per step.
        hidden: width of the MLPs (3 hidden layers).
        pretrain_steps: DSM steps fitting the initial network to the teacher.
        lr_fake, lr_gen: Adam learning rates (beta1 = 0, beta2 = 0.99).
        sigma_init: generator input noise level (MATH §2).
        t_max: generator-loss Karras levels use ``u <= t_max / 1000`` (MATH §2). 600 (sigma <= 5.8) instead of the
            image recipe's 800 (sigma <= 24): the ring has scale ~1, so larger levels carry almost no signal.
        ratio_weight: weight of the discriminator loss inside the fake step. The discriminator is a head on the fake
            score's trunk; at weight 1 the DSM loss dominates that trunk and the ratio it learns is far too flat
            (at sigma = 0.05 the true ``log r`` on student samples has std ~3, the head's ~0.3), so ``fkl`` and
            ``jeffreys`` weight their samples by ``r ~ 1`` and do not even out the modes. 10 gives std 1.2-1.9 and a
            correlation of 0.7-0.85 with the true ``log r`` (measurements in the toy readme).
        n_eval: samples for the metrics and the plot.
        radius, std: ring geometry.
        threads: torch CPU threads while training (restored afterwards); tiny MLPs run best on one.
        normalizer: ``"sample"`` (MATH §5's per-sample DMD normaliser ``w_f``) or ``"batch"`` (``w_f`` averaged over
            the batch). In 2-D the per-sample ``w_f = mean of 2 numbers`` is often near 0, so ``1/w_f`` is heavy
            tailed (its variance diverges logarithmically); images average thousands of pixels and do not have this
            problem. Applies to ``uni``, whose weighting is a free tensor; the presets keep their built-in form.
        fake_steps: fake-score (+discriminator) steps per generator step; ``None``: the preset's ``k_fake``.
        ema_halflife: half-life (generator steps) of the generator EMA that is evaluated (MATH §7); 0 = off.
        ratio_clip: optional ``(r_min, r_max)`` clip of the density ratio (:func:`fastui.log_density_ratio`).
        self_normalize: divide the density ratio by its batch mean (:func:`fastui.log_density_ratio`).
        c_clip: clip of ``|w_i c_i|`` in the ``uni`` loss (MATH §5: ``c`` carries an extra ``1/sigma^2``; ``None``:
            no clip). Without it ``js`` diverges (its ``c`` holds ``r g'(r) F / sigma^2 >= 0``, which pushes samples
            away from the teacher, more so the farther they are) and ``fkl`` concentrates its mass more slowly
            (toy readme); 100 is below ``|w_i a_i|`` (256-1024 at the start of a run), so only the tail is clipped.
        ratio_start: generator steps with ``r = 1`` before the discriminator's ratio is used (ratio warm-up).
        z_dim: generator noise dimension. 2: the generator is the teacher-fit denoiser applied once at
            ``sigma_init`` (as in the image recipe); more: a plain MLP ``G(z)`` from a random start (a map from more
            than 2 noise dimensions can split the plane into 8 clusters with little mass in between).
    """

    method: str = "uni"
    divergence: str = "fkl"
    steps: int = 2000
    seed: int = 0
    batch: int = 1024
    hidden: int = 128
    pretrain_steps: int = 600
    lr_fake: float = 1e-3
    lr_gen: float = 1e-3
    sigma_init: float = 2.5
    t_max: float = 600.0
    ratio_weight: float = 10.0
    n_eval: int = 4000
    radius: float = 1.0
    std: float = 0.1
    threads: int = 1
    z_dim: int = 2
    ema_halflife: float = 100.0
    normalizer: str = "batch"
    fake_steps: int | None = None
    ratio_clip: tuple[float, float] | None = None
    self_normalize: bool = False
    c_clip: float | None = 100.0
    ratio_start: int = 0


@dataclass
class ToyResult:
    """Outcome of :func:`train`: metrics, samples and timings."""

    config: ToyConfig
    energy_distance: float
    modes_covered: int
    mode_fractions: list[float]
    off_mode_fraction: float
    wall_s: float
    cpu_s: float
    student: torch.Tensor = field(repr=False)
    teacher: torch.Tensor = field(repr=False)


# --------------------------------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------------------------------


class ToyDenoiser(nn.Module):
    """EDM-preconditioned MLP denoiser for 2-D points, with a discriminator head on the last hidden layer.

    ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` (MATH §1); ``c_noise = ln(sigma)/4`` enters through a few
    Fourier features so that the MLP sees noise levels from 0.002 to 80 on a comparable scale.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, sigma_data: float = 0.5, n_freq: int = 8):
        super().__init__()
        self.sigma_data = sigma_data
        self.register_buffer("freqs", torch.arange(1, n_freq + 1, dtype=torch.float32) * math.pi / 2)
        self.trunk = nn.Sequential(
            nn.Linear(dim + 1 + 2 * n_freq, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
        )
        self.out = nn.Linear(hidden, dim)
        self.disc = nn.Linear(hidden, 1)

    def _features(self, x: torch.Tensor, sigma: torch.Tensor):
        sigma = sigma.reshape(-1, 1).to(x.dtype)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        emb = torch.cat([c_noise, (c_noise * self.freqs).sin(), (c_noise * self.freqs).cos()], dim=1)
        hid = self.trunk(torch.cat([c_in * x, emb], dim=1))
        return hid, c_skip, c_out

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels=None) -> torch.Tensor:
        """Denoised ``D(x; sigma)``. Shapes: ``x [B, 2]``, ``sigma [B]``; returns ``[B, 2]``."""
        hid, c_skip, c_out = self._features(x, sigma)
        return c_skip * x + c_out * self.out(hid)

    def forward_with_logits(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(D(x; sigma) [B, 2], discriminator logit [B])`` from one trunk evaluation."""
        hid, c_skip, c_out = self._features(x, sigma)
        return c_skip * x + c_out * self.out(hid), self.disc(hid).squeeze(1)


class ToyGenerator(nn.Module):
    """Plain MLP generator ``x_g = G(z)`` for ``z`` of any dimension (used when ``z_dim > 2``)."""

    def __init__(self, z_dim: int, hidden: int = 128, dim: int = 2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


# --------------------------------------------------------------------------------------------------------------------
# noise levels (MATH §2)
# --------------------------------------------------------------------------------------------------------------------


def _karras(t: torch.Tensor) -> torch.Tensor:
    """Karras rho=7 level at ``t in [0, 1]`` (0: sigma_min, 1: sigma_max)."""
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    return (lo + t * (hi - lo)) ** RHO


def sample_sigma(kind: str, n: int, generator: torch.Generator, t_max: float = 800.0) -> torch.Tensor:
    """Noise levels ``[n]`` of a schedule: ``karras`` (u <= t_max/1000), ``karras_index`` (index 20..980 of 1000
    levels) or ``lognormal`` (ln sigma ~ N(-1.2, 1.2^2))."""
    if kind == "karras":
        return _karras(torch.rand(n, generator=generator) * (t_max / 1000))
    if kind == "karras_index":
        return _karras(torch.randint(20, 981, (n,), generator=generator).float() / 999)
    if kind == "lognormal":
        return (torch.randn(n, generator=generator) * 1.2 - 1.2).exp()
    raise ValueError(f"unknown sigma schedule {kind!r}; known: karras, karras_index, lognormal")


# --------------------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------------------


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` between two samples ``[n, d]`` (V-statistic)."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def mode_coverage(x: torch.Tensor, teacher: GMMTeacher, *, min_fraction: float = 0.05, within_std: float = 2.0):
    """Fraction of samples at each mode (nearest mean, within ``within_std`` component standard deviations).

    Within 2 std lies 86% of a 2-D Gaussian's mass, so the teacher itself has ~0.108 per mode; a student smeared over
    the whole disc has ~0.03 per mode and covers none.

    Returns:
        ``(modes holding >= min_fraction of the samples, per-mode fractions, fraction near no mode)``.
    """
    x = x.double()
    dist = torch.cdist(x, teacher.means.to(x))
    nearest, idx = dist.min(1)
    radius = within_std * teacher.eigvals.max().sqrt().item()
    near = nearest <= radius
    frac = [float(((idx == k) & near).double().mean()) for k in range(teacher.n_components)]
    return sum(f >= min_fraction for f in frac), frac, float((~near).double().mean())


# --------------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------------


def _adam(params, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=(0.0, 0.99))  # beta1 = 0 as in MATH §7


def _noisy_pair(x0: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator):
    n = torch.randn(x0.shape, generator=generator)
    return x0 + sigma[:, None] * n, n


def pretrain_dsm(net: ToyDenoiser, teacher: GMMTeacher, cfg: ToyConfig, generator: torch.Generator) -> None:
    """Fit ``net`` to the teacher by denoising score matching (the toy's stand-in for a pretrained teacher net)."""
    opt = _adam(net.parameters(), cfg.lr_fake)
    for _ in range(cfg.pretrain_steps):
        x0 = teacher.sample(cfg.batch, generator=generator)
        sigma = sample_sigma("lognormal", cfg.batch, generator)
        x_t, _ = _noisy_pair(x0, sigma, generator)
        loss = fastui.fake_score_loss(net(x_t, sigma), x0, sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _generate(gen: nn.Module, z: torch.Tensor, sigma_init: float) -> torch.Tensor:
    if isinstance(gen, ToyGenerator):
        return gen(z)
    return gen(sigma_init * z, torch.full((z.shape[0],), sigma_init))


def _generator_loss(cfg: ToyConfig, preset: _div.Preset, x_g, d_teacher, d_fake, sigma, log_ratio):
    """fastui's public losses (the dispatched ones once the fused ops exist)."""
    if preset.form == "uni":
        weighting = "sid"
        if cfg.normalizer == "batch":  # MATH §5's w = lambda_g sigma^4 / (2 w_f) with w_f averaged over the batch
            w_f = dmd_normalizer(x_g, d_teacher).mean()
            weighting = 100.0 * sigma.detach() ** 4 / (2 * w_f)
        elif cfg.normalizer != "sample":
            raise ValueError(f"normalizer must be 'sample' or 'batch', got {cfg.normalizer!r}")
        return fastui.score_distill_loss(x_g, d_teacher, d_fake, sigma, log_ratio, divergence=cfg.divergence,
                                         weighting=weighting, c_clip=cfg.c_clip)
    return fastui.preset_loss(preset, x_g, d_teacher, d_fake, sigma, log_ratio, divergence=cfg.divergence)


def train(cfg: ToyConfig, log=None) -> ToyResult:
    """Distil the ring teacher with ``cfg`` and evaluate the student.

    Args:
        cfg: the hyper-parameters.
        log: optional ``print``-like callable for progress lines.

    Returns:
        :class:`ToyResult` with the energy distance, mode coverage, samples and wall time.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, log)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: ToyConfig, log) -> ToyResult:
    start, cpu_start = time.perf_counter(), time.process_time()
    preset = _div.get_preset(cfg.method)
    needs_ratio = preset.needs_ratio or preset.form == "uni"
    if preset.form in ("uni", "fdistill"):
        _div.get(cfg.divergence)  # fail early on a typo
    torch.manual_seed(cfg.seed)  # parameter initialisation
    gen_rng = torch.Generator().manual_seed(cfg.seed)
    teacher = ring8(cfg.radius, cfg.std)

    fake = ToyDenoiser(hidden=cfg.hidden)
    pretrain_dsm(fake, teacher, cfg, gen_rng)
    # both start from the teacher fit, like the image recipe (2-D noise); or a fresh MLP from more noise dimensions
    gen = copy.deepcopy(fake) if cfg.z_dim == 2 else ToyGenerator(cfg.z_dim, cfg.hidden)
    ema = copy.deepcopy(gen).requires_grad_(False)
    ema_beta = 0.5 ** (1.0 / cfg.ema_halflife) if cfg.ema_halflife > 0 else 0.0
    opt_fake = _adam(fake.parameters(), cfg.lr_fake)
    opt_gen = _adam(gen.parameters(), cfg.lr_gen)

    for step in range(cfg.steps):
        # ---- k_fake fake-score (+ discriminator) steps on fresh generator samples
        fake.requires_grad_(True)
        for _ in range(cfg.fake_steps or preset.k_fake):
            with torch.no_grad():
                x_g = _generate(gen, torch.randn(cfg.batch, cfg.z_dim, generator=gen_rng), cfg.sigma_init)
            sigma = sample_sigma("lognormal", cfg.batch, gen_rng)
            x_t, n = _noisy_pair(x_g, sigma, gen_rng)
            if needs_ratio:
                real_t = teacher.sample(cfg.batch, generator=gen_rng) + sigma[:, None] * n  # same sigma, same n
                d_fake, logit_fake = fake.forward_with_logits(x_t, sigma)
                _, logit_real = fake.forward_with_logits(real_t, sigma)
                loss = (fastui.fake_score_loss(d_fake, x_g, sigma)
                        + cfg.ratio_weight * fastui.discriminator_loss(logit_fake, logit_real))
            else:
                loss = fastui.fake_score_loss(fake(x_t, sigma), x_g, sigma)
            opt_fake.zero_grad(set_to_none=True)
            loss.backward()
            opt_fake.step()

        # ---- one generator step: teacher and fake score frozen, their inputs carry the gradient
        fake.requires_grad_(False)
        x_g = _generate(gen, torch.randn(cfg.batch, cfg.z_dim, generator=gen_rng), cfg.sigma_init)
        sigma = sample_sigma(preset.sigma_g, cfg.batch, gen_rng, cfg.t_max)
        x_t = x_g + sigma[:, None] * torch.randn(x_g.shape, generator=gen_rng)
        d_teacher = teacher(x_t, sigma)
        d_fake, logits = fake.forward_with_logits(x_t, sigma)
        log_ratio = None
        if needs_ratio and step >= cfg.ratio_start:
            log_ratio = fastui.log_density_ratio(logits, clip=cfg.ratio_clip, self_normalize=cfg.self_normalize)
        loss = _generator_loss(cfg, preset, x_g, d_teacher, d_fake, sigma, log_ratio)
        opt_gen.zero_grad(set_to_none=True)
        loss.backward()
        opt_gen.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), gen.parameters()):
                p_ema.lerp_(p, 1.0 - ema_beta)
        if log is not None and (step + 1) % max(1, cfg.steps // 5) == 0:
            log(f"step {step + 1}/{cfg.steps}  generator loss {loss.item():.4g}")

    with torch.no_grad():
        eval_rng = torch.Generator().manual_seed(10_000 + cfg.seed)
        student = _generate(ema, torch.randn(cfg.n_eval, cfg.z_dim, generator=eval_rng), cfg.sigma_init)
        reference = teacher.sample(cfg.n_eval, generator=eval_rng)
    covered, fractions, off = mode_coverage(student, teacher)
    return ToyResult(cfg, energy_distance(student, reference), covered, fractions, off,
                     time.perf_counter() - start, time.process_time() - cpu_start, student, reference)


def save_plot(result: ToyResult, path: str) -> None:
    """Teacher vs student scatter plots side by side (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    lim = 1.6 * cfg.radius
    for ax, pts, title in ((axes[0], result.teacher, "teacher (ring8)"),
                           (axes[1], result.student, f"student: {_label(cfg)}")):
        pts = pts.numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4)
        ax.set_title(title)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    fig.suptitle(f"energy distance {result.energy_distance:.4f}, modes covered {result.modes_covered}/8")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _label(cfg: ToyConfig) -> str:
    form = _div.get_preset(cfg.method).form
    return f"{cfg.method}({cfg.divergence})" if form in ("uni", "fdistill") else cfg.method


TABLE_RUNS = (("uni", "rkl"), ("uni", "fkl"), ("uni", "jeffreys"), ("uni", "js"), ("sid", "-"), ("dmd", "-"))


def _table(args) -> int:
    """Run :data:`TABLE_RUNS` with one budget and print a markdown table (PNGs under runs/toy/)."""
    print("| method | divergence | energy distance | modes covered (>= 5%) | smallest mode fraction "
          "| off-mode fraction | CPU time (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for method, div in TABLE_RUNS:
        cfg = ToyConfig(method=method, divergence=div if div != "-" else "fkl", steps=args.steps, seed=args.seed,
                        pretrain_steps=args.pretrain_steps)
        result = train(cfg)
        save_plot(result, os.path.join("runs", "toy", f"{method}_{div.replace('-', 'none')}.png"))
        print(f"| {method} | {div} | {result.energy_distance:.4f} | {result.modes_covered}/8 | "
              f"{min(result.mode_fractions):.3f} | {result.off_mode_fraction:.2f} | {result.cpu_s:.0f} |", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fastui.toy [--method M] [--divergence D] [--steps N] [--seed S] [--out PNG]``.

    Returns:
        0 on success (argparse exits with 2 on a bad option, an unknown method or divergence).
    """
    ap = argparse.ArgumentParser(prog="fastui toy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="uni", help=f"method preset: {', '.join(_div.preset_names())}")
    ap.add_argument("--divergence", default="fkl", help=f"divergence (uni, fdistill): {', '.join(_div.names())}")
    ap.add_argument("--steps", type=int, default=ToyConfig.steps, help="generator steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain-steps", type=int, default=ToyConfig.pretrain_steps,
                    help="DSM steps fitting the initial network to the teacher")
    ap.add_argument("--out", default=None,
                    help="PNG path (default runs/toy/<method>_<divergence>.png; <method>_none.png where it has none)")
    ap.add_argument("--table", action="store_true",
                    help="run the comparison (uni with rkl, fkl, jeffreys, js; sid; dmd) and print a markdown table; "
                         "PNGs go to runs/toy/")
    args = ap.parse_args(argv)
    if args.table:
        return _table(args)
    try:
        _div.get_preset(args.method)
        _div.get(args.divergence)
    except ValueError as err:
        ap.error(str(err))
    cfg = ToyConfig(method=args.method, divergence=args.divergence, steps=args.steps, seed=args.seed,
                    pretrain_steps=args.pretrain_steps)
    uses_div = _div.get_preset(args.method).divergence is not None  # sid, dmd, ... ignore --divergence
    tag = args.divergence.replace(":", "") if uses_div else "none"
    out = args.out or os.path.join("runs", "toy", f"{args.method}_{tag}.png")
    result = train(cfg, log=print)
    save_plot(result, out)
    fr = " ".join(f"{f:.2f}" for f in result.mode_fractions)
    print(f"{_label(cfg)}: energy distance {result.energy_distance:.4f}  modes covered {result.modes_covered}/8 "
          f"(fractions {fr}; off-mode {result.off_mode_fraction:.2f})  wall {result.wall_s:.1f} s, "
          f"CPU {result.cpu_s:.1f} s  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
