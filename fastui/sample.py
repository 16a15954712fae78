"""Sampling: EDM's deterministic Heun sampler for teachers, one-step sampling for generators.

Python API::

    from fastui.sample import heun_sample, one_step, karras_sigmas
    x = heun_sample(teacher, torch.randn(64, 1, 32, 32), labels, num_steps=18)   # 2*18-1 = 35 network calls
    x = one_step(generator, torch.randn(64, 1, 32, 32), labels, sigma_init=2.5)

Command line (``fastui sample``)::

    fastui sample --teacher demo --steps 18 --n 64 --out samples/          # teacher, Heun
    fastui sample --generator RUN/generator --n 64 --out samples/          # one step
    fastui sample --teacher CKPT_DIR --steps 35 --n 10000 --batch 500 --npz --out samples/

Outputs: ``grid.png`` (first ``--grid`` images) and, with ``--npz``, ``samples.npz`` holding ``images`` (uint8
[N, H, W, C]) and ``labels`` (int64 [N], -1 for unconditional).

Heun sampler (EDM Algorithm 1 with S_churn = 0): sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) -
smax^(1/rho)))^rho for i < N, sigma_N = 0; Euler step with d = (x - D(x; sigma))/sigma, then the trapezoidal
(2nd order) correction except on the last step (to sigma = 0).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

STEP_PRESETS = {"fast": 18, "standard": 35}


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  device=None, dtype=torch.float64) -> torch.Tensor:
    """The EDM (Karras) noise levels followed by a final 0.

    Args:
        num_steps: N >= 1 levels (the returned tensor has N + 1 entries; the last is 0).
    Returns:
        [N + 1] tensor, decreasing from sigma_max to sigma_min, then 0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    i = torch.arange(num_steps, dtype=dtype, device=device)
    frac = i / max(num_steps - 1, 1)
    s = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=dtype, device=device)])


@torch.no_grad()
def heun_sample(net, latents: torch.Tensor, class_labels=None, num_steps: int = 35, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0, second_order: bool = True,
                state_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Deterministic Heun sampling of a denoiser ``net(x, sigma, class_labels)`` from noise.

    Args:
        net: denoiser D(x; sigma, c) (fastui ``Denoiser`` or an analytic teacher).
        latents: standard normal [B, ...] (scaled by sigma_max inside).
        class_labels: int64 [B], one-hot [B, label_dim] or None.
        num_steps: number of noise levels (network calls: 2 N - 1 with the correction).
        sigma_min, sigma_max, rho: the Karras schedule; sigma_min/max are clamped to the net's supported range
            when it has ``sigma_min``/``sigma_max`` attributes (VP teachers), as EDM does.
        second_order: Heun correction (False = Euler).
        state_dtype: dtype of the ODE state (float64 like EDM's sampler; the net sees float32).
    Returns:
        samples [B, ...] float32, in the data range (~[-1, 1] for images).
    """
    sigma_min = max(sigma_min, float(getattr(net, "sigma_min", 0.0) or 0.0))
    sigma_max = min(sigma_max, float(getattr(net, "sigma_max", float("inf"))))
    sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho, device=latents.device, dtype=state_dtype)
    batch = latents.shape[0]

    def denoise(x, sigma):
        s = torch.full((batch,), float(sigma), device=latents.device, dtype=torch.float32)
        return net(x.to(torch.float32), s, class_labels).to(state_dtype)

    x = latents.to(state_dtype) * sigmas[0]
    for i in range(num_steps):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        d_cur = (x - denoise(x, s_cur)) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if second_order and i < num_steps - 1:
            d_next = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.to(torch.float32)


@torch.no_grad()
def one_step(gen, z: torch.Tensor, labels=None, sigma_init: float = 2.5) -> torch.Tensor:
    """One-step generation x_g = G(sigma_init z; sigma_init, c) (MATH §2).

    Args:
        gen: generator with the denoiser call signature.
        z: standard normal [B, C, H, W].
        labels: int64 [B], one-hot, or None.
        sigma_init: the generator's fixed noise level (2.5 by default).
    Returns:
        float32 [B, C, H, W].
    """
    sigma = torch.full((z.shape[0],), float(sigma_init), device=z.device, dtype=torch.float32)
    return gen(z.float() * sigma_init, sigma, labels).float()


def _labels_for(net, n: int, args, device, generator) -> torch.Tensor | None:
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    if label_dim == 0:
        return None
    if args.class_label is not None:
        return torch.full((n,), args.class_label, dtype=torch.int64, device=device)
    if args.random_labels:
        return torch.randint(0, label_dim, (n,), generator=generator, device="cpu").to(device)
    return (torch.arange(n) % label_dim).to(device)  # cycle 0..K-1 so every grid row shows all classes


def save_png_grid(images: torch.Tensor, path, nrow: int | None = None) -> Path:
    """Save a grid via ``fastui.eval.grid.save_grid``; a minimal PIL fallback if the eval package is absent.

    Shapes: images [N, C, H, W] in [-1, 1].
    """
    try:
        from fastui.eval.grid import save_grid
    except ImportError:
        save_grid = None
    if save_grid is not None:
        return save_grid(images, path, nrow=nrow)
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    u8 = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    canvas = np.zeros((rows * h, nrow * w, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[r * h:(r + 1) * h, col * w:(col + 1) * w] = u8[i].transpose(1, 2, 0)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(tmp)
    os.replace(tmp, path)
    return path


def _parse(argv):
    p = argparse.ArgumentParser(prog="fastui sample", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--teacher", help="teacher: checkpoint dir, 'demo', EDM snapshot .pkl, or analytic spec")
    src.add_argument("--generator", help="one-step generator checkpoint dir (fastui checkpoint)")
    p.add_argument("--out", required=True, help="output directory (grid.png, samples.npz)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--batch", type=int, default=256, help="samples per network batch")
    p.add_argument("--steps", default="18", help="Heun steps: an integer or a preset (fast=18, standard=35)")
    p.add_argument("--sigma-min", type=float, default=0.002)
    p.add_argument("--sigma-max", type=float, default=80.0)
    p.add_argument("--rho", type=float, default=7.0)
    p.add_argument("--euler", action="store_true", help="first-order steps only (no Heun correction)")
    p.add_argument("--sigma-init", type=float, default=2.5, help="generator noise level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class-label", type=int, default=None, help="one class for all samples")
    p.add_argument("--random-labels", action="store_true", help="random classes (default: cycle 0..K-1)")
    p.add_argument("--grid", type=int, default=64, help="images in grid.png (0 = no grid)")
    p.add_argument("--npz", action="store_true", help="also write samples.npz (uint8 NHWC + labels)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``fastui sample``: write a PNG grid (and optionally .npz) of teacher or generator samples."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    from fastui.teachers import TeacherError, load_teacher

    steps = STEP_PRESETS.get(args.steps, None)
    if steps is None:
        try:
            steps = int(args.steps)
        except ValueError:
            print(f"fastui sample: --steps must be an integer or one of {sorted(STEP_PRESETS)}", file=sys.stderr)
            return 2
    device = torch.device(args.device)
    try:
        net = load_teacher(args.teacher or args.generator, device=device)
    except (TeacherError, FileNotFoundError) as err:
        print(f"fastui sample: {err}", file=sys.stderr)
        return 2
    if not hasattr(net, "img_resolution"):
        print("fastui sample: analytic teachers have no image shape; use their .sample() method", file=sys.stderr)
        return 2
    net.eval()
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    gen = torch.Generator().manual_seed(args.seed)
    labels_all = _labels_for(net, args.n, args, device, gen)
    out_images, out_labels = [], []
    for start in range(0, args.n, args.batch):
        b = min(args.batch, args.n - start)
        z = torch.randn((b, *shape), generator=gen).to(device)
        lab = labels_all[start:start + b] if labels_all is not None else None
        if args.generator:
            x = one_step(net, z, lab, sigma_init=args.sigma_init)
        else:
            x = heun_sample(net, z, lab, num_steps=steps, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                            rho=args.rho, second_order=not args.euler)
        out_images.append(x.clamp(-1, 1).cpu())
        out_labels.append(lab.cpu() if lab is not None else torch.full((b,), -1, dtype=torch.int64))
    images = torch.cat(out_images)
    labels = torch.cat(out_labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.grid:
        nrow = int(getattr(net, "label_dim", 0) or 0) or None
        path = save_png_grid(images[: args.grid], out / "grid.png", nrow=nrow)
        print(f"wrote {path}")
    if args.npz:
        try:  # the quantisation fastui.eval uses for FID, so .npz files feed it unchanged
            from fastui.eval.grid import to_uint8
        except ImportError:
            to_uint8 = None
        if to_uint8 is not None:
            u8 = to_uint8(images)
        else:
            u8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        tmp = out / "samples.tmp.npz"
        np.savez(tmp, images=u8, labels=labels.numpy())
        os.replace(tmp, out / "samples.npz")
        print(f"wrote {out / 'samples.npz'} ({len(u8)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
