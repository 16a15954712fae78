"""Sample grids: tile a batch of images into one PNG, or several labelled batches side by side.

Contract 5 (team brief): ``save_grid(images, path, nrow=None)`` and ``side_by_side(panels, path, nrow=None)``,
images are float tensors ``[N, C, H, W]`` in ``[-1, 1]`` with ``C`` = 1 (shown grey) or 3 (RGB).

Example::

    from fastui.eval.grid import save_grid, side_by_side
    save_grid(samples, "samples.png")                       # samples: [64, 1, 32, 32] in [-1, 1]
    side_by_side({"teacher (35 steps)": a, "generator (1 step)": b}, "compare.png")
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

_PAD = 2  # pixels between tiles
_PAD_VALUE = 255  # white separators, so dark Fashion-MNIST backgrounds stay distinguishable
_LABEL_H = 14  # height of the label strip above each panel (fits PIL's default bitmap font)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Quantise images from ``[-1, 1]`` to uint8 ``[0, 255]`` (the rounding used everywhere in fastui.eval).

    Args:
        images: float tensor ``[N, C, H, W]`` in ``[-1, 1]`` (values outside are clipped).

    Returns:
        uint8 ndarray ``[N, H, W, C]``.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [N, C, H, W], got {tuple(images.shape)}")
    x = images.detach().to("cpu", torch.float32)
    # (x + 1) * 127.5 then round-half-up: the quantisation of EDM's generate.py (x * 127.5 + 128, clip, floor).
    x = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _tile(images: torch.Tensor, nrow: int | None) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images into one ``[rows*(H+pad)+pad, nrow*(W+pad)+pad, 3]`` uint8 array."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    if c == 1:  # grey -> RGB so grey panels can sit next to colour ones
        arr = np.repeat(arr, 3, axis=3)
    elif c != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    if n == 0:
        raise ValueError("no images to tile")
    ncol = nrow if nrow else max(1, math.ceil(math.sqrt(n)))
    ncol = min(ncol, n)
    nrows = math.ceil(n / ncol)
    out = np.full((nrows * (h + _PAD) + _PAD, ncol * (w + _PAD) + _PAD, 3), _PAD_VALUE, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y0, x0 = _PAD + r * (h + _PAD), _PAD + col * (w + _PAD)
        out[y0 : y0 + h, x0 : x0 + w] = arr[i]
    return out


def _atomic_save(img: Image.Image, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)  # a reader never sees a half-written PNG
    return path


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Save a batch as one PNG grid.

    Args:
        images: float tensor ``[N, C, H, W]`` in ``[-1, 1]``, ``C`` = 1 (grey) or 3 (RGB), any device.
        path: output ``.png`` path (parent directories are created; written atomically).
        nrow: images per row; default ``ceil(sqrt(N))``.

    Shapes:
        The PNG is ``rows * (H + 2) + 2`` pixels high and ``ncol * (W + 2) + 2`` wide (2-pixel white separators),
        with ``ncol = min(nrow, N)`` and ``rows = ceil(N / ncol)``.

    Returns:
        The path written.
    """
    return _atomic_save(Image.fromarray(_tile(images, nrow)), path)


def side_by_side(
    panels: dict[str, torch.Tensor], path: str | os.PathLike, nrow: int | None = None, scale: int = 1
) -> Path:
    """Save several batches as labelled grids next to each other in one PNG.

    Args:
        panels: ``{label: images}``, each images a float tensor ``[N_i, C_i, H, W]`` in ``[-1, 1]``; C_i = 1 or 3
            (1-channel panels are shown grey). Panels are placed left to right in dict order, each with its label
            (PIL's default font) in a strip above it.
        path: output ``.png`` path.
        nrow: images per row inside each panel (default ``ceil(sqrt(N_i))``).
        scale: integer nearest-neighbour upscaling of every panel (32x32 tiles are small on screen).

    Returns:
        The path written.
    """
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    tiles = []
    for label, images in panels.items():
        t = _tile(images, nrow)
        if scale > 1:
            t = np.repeat(np.repeat(t, scale, axis=0), scale, axis=1)
        tiles.append((str(label), t))
    font = ImageFont.load_default()
    gap = 8
    height = _LABEL_H + max(t.shape[0] for _, t in tiles)
    width = sum(t.shape[1] for _, t in tiles) + gap * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for label, t in tiles:
        draw.text((x + 2, 1), label, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(t), (x, _LABEL_H))
        x += t.shape[1] + gap
    return _atomic_save(canvas, path)
