"""Image preprocessing applied by the shard writer: resize/crop modes and padding.

Modes (``--transform``):
    none                  keep the image as is (``--resolution`` must then be unset or equal to the image size)
    resize                resize to ``res x res`` with ``--filter`` (aspect ratio not kept)
    center-crop           crop the largest centred square, then resize it to ``res`` with ``--filter``
    center-crop-dhariwal  the ADM ImageNet preprocessing that EDM's ``dataset_tool --transform=center-crop-dhariwal``
                          also uses: while the short side >= 2*res, halve both sides (floor) with a BOX filter; then
                          a BICUBIC resize so the short side equals res (other side rounded); then a centred crop
                          with offsets floor((side - res) / 2). ImageNet 64x64 for EDM/ADM = this with res = 64.

Padding (``--pad-to``) surrounds the image symmetrically with ``pad_value`` (default 0 = black), e.g. 28 -> 32
for Fashion-MNIST (2 pixels per side).
"""

from __future__ import annotations

import numpy as np

TRANSFORMS = ("none", "resize", "center-crop", "center-crop-dhariwal")
FILTERS = ("box", "bilinear", "bicubic", "lanczos", "nearest")


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(img) -> np.ndarray:
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _filter(name: str):
    from PIL import Image

    return {
        "box": Image.BOX,
        "bilinear": Image.BILINEAR,
        "bicubic": Image.BICUBIC,
        "lanczos": Image.LANCZOS,
        "nearest": Image.NEAREST,
    }[name]


def center_crop_dhariwal(image: np.ndarray, res: int) -> np.ndarray:
    """ADM/EDM ImageNet preprocessing (see module docstring).

    Shapes:
        image [H, W, C] uint8 -> [res, res, C] uint8.
    """
    from PIL import Image

    img = _pil(image)
    # Repeated 2x BOX reductions first: a single bicubic from a large image would alias.
    while min(img.size) >= 2 * res:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    scale = res / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), resample=Image.BICUBIC)
    arr = _array(img)
    top, left = (arr.shape[0] - res) // 2, (arr.shape[1] - res) // 2
    return np.ascontiguousarray(arr[top : top + res, left : left + res])


def center_crop(image: np.ndarray, res: int, filter: str = "lanczos") -> np.ndarray:
    """Crop the largest centred square, then resize to ``res x res``.

    Shapes:
        image [H, W, C] uint8 -> [res, res, C] uint8.
    """
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = image[top : top + s, left : left + s]
    if s == res:
        return np.ascontiguousarray(square)
    return _array(_pil(np.ascontiguousarray(square)).resize((res, res), resample=_filter(filter)))


def pad(image: np.ndarray, size: int, value: int = 0) -> np.ndarray:
    """Pad symmetrically to ``size x size`` (extra odd pixel on the bottom/right).

    Shapes:
        image [H, W, C] uint8 with H, W <= size -> [size, size, C] uint8.
    """
    h, w = image.shape[:2]
    if h > size or w > size:
        raise ValueError(f"cannot pad a {h}x{w} image to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(image, ((top, size - h - top), (left, size - w - left), (0, 0)), constant_values=value)


def make_transform(
    mode: str = "none",
    resolution: int | None = None,
    filter: str = "lanczos",
    pad_to: int | None = None,
    pad_value: int = 0,
    channels: int | None = None,
):
    """Build the per-image preprocessing function used by the writer.

    Args:
        mode: one of ``TRANSFORMS``.
        resolution: output side for resize/crop modes.
        filter: one of ``FILTERS`` (for ``resize`` and ``center-crop``; dhariwal fixes its own filters).
        pad_to: pad to this side after the resize/crop (None = no padding).
        pad_value: pixel value of the padding (0 = black).
        channels: force 1 (grayscale) or 3 (RGB) channels; None keeps the source's.

    Returns:
        A picklable callable ``f(image uint8 [H, W, C]) -> uint8 [H', W', C']``.
    """
    if mode not in TRANSFORMS:
        raise ValueError(f"unknown transform {mode!r}; valid: {', '.join(TRANSFORMS)}")
    if filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r}; valid: {', '.join(FILTERS)}")
    if mode != "none" and not resolution:
        raise ValueError(f"--transform {mode} needs --resolution")
    return _Transform(mode, resolution, filter, pad_to, pad_value, channels)


class _Transform:
    """Picklable closure (writer workers may be spawned, not forked)."""

    def __init__(self, mode, resolution, filter, pad_to, pad_value, channels):
        self.mode, self.resolution, self.filter = mode, resolution, filter
        self.pad_to, self.pad_value, self.channels = pad_to, pad_value, channels

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.channels == 3 and image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        elif self.channels == 1 and image.shape[-1] == 3:
            image = _array(_pil(image).convert("L"))
        if self.mode == "resize":
            image = _array(_pil(image).resize((self.resolution, self.resolution), resample=_filter(self.filter)))
        elif self.mode == "center-crop":
            image = center_crop(image, self.resolution, self.filter)
        elif self.mode == "center-crop-dhariwal":
            image = center_crop_dhariwal(image, self.resolution)
        if self.pad_to:
            image = pad(image, self.pad_to, self.pad_value)
        return np.ascontiguousarray(image)
