"""Image sources for FID: reference data sets and sample files, all returned as uint8 ``[N, H, W, C]``.

A source spec (``fastui eval --ref SPEC`` / ``--images SPEC``) is one of

    ``fmnist-test`` / ``fmnist-train``   Fashion-MNIST from Debian's ``dataset-fashion-mnist`` IDX files (10,000 /
                                          60,000 images), zero-padded 28 -> 32 (2 black pixels each side, the
                                          layout of ``fastui shards fashion-mnist --pad-to 32`` that the demo
                                          teacher is trained on) unless ``pad_to=0``
    a shard directory or its ``manifest.json``   fastui webdataset shards, read in shard/key order
    ``FILE.npz`` / ``FILE.npy``                  image arrays: key ``images`` (else ``x``, ``samples``, ``arr_0``),
                                                 uint8 ``[0, 255]`` or float in ``[-1, 1]`` (quantised as in
                                                 :func:`fastui.eval.grid.to_uint8`), NHWC or NCHW

Subsets (``n`` smaller than the source) are a seeded random choice without replacement (numpy
``default_rng(seed).choice``, sorted), so the same ``n`` and seed always give the same images.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np

FMNIST_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGE_KEYS = ("images", "x", "samples", "arr_0")


def _pad_nhwc(images: np.ndarray, size: int) -> np.ndarray:
    """Symmetric zero padding of ``[N, H, W, C]`` to ``size x size`` (28 -> 32 puts 2 pixels on each side)."""
    h, w = images.shape[1:3]
    if size <= 0 or (h == size and w == size):
        return images
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))


def fashion_mnist_images(split: str, pad_to: int = 32, root: str | None = None) -> np.ndarray:
    """Fashion-MNIST images as uint8 ``[N, S, S, 1]`` (S = ``pad_to``, or 28 when ``pad_to`` is 0).

    Uses :func:`fastui.data.importers.fashion_mnist` (contract 3) when present, otherwise reads the IDX files.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        pad_to: zero-pad to this side; 0 keeps 28x28.
        root: folder of the IDX files (default ``/usr/share/datasets/fashion-mnist``).

    Returns:
        uint8 ndarray ``[N, S, S, 1]``.
    """
    try:
        from fastui.data.importers import DataError, fashion_mnist
    except ImportError:
        fashion_mnist = None
    if fashion_mnist is not None:
        try:
            images = fashion_mnist(root=root, split=split)[0]
        except DataError as exc:  # one error type for callers: a missing data set is a missing file
            raise FileNotFoundError(str(exc)) from exc
    else:
        images = _read_idx_images(Path(root or FMNIST_ROOT) / f"{'train' if split == 'train' else 't10k'}"
                                  "-images-idx3-ubyte.gz")[..., None]
    return _pad_nhwc(images, pad_to)


def _read_idx_images(path: Path) -> np.ndarray:
    """Fallback IDX reader: header = 0, 0, dtype 0x08, ndim, then ndim big-endian uint32 sizes, then bytes."""
    import gzip

    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def shard_images(source: str | os.PathLike) -> np.ndarray:
    """All images of a fastui shard directory, in shard and key order, as uint8 ``[N, H, W, C]``.

    The shards are read directly (``manifest.json`` lists them; each sample's ``{key}.png``), so the result is
    deterministic and independent of the training loader's shuffling and resampling.

    Args:
        source: the shard directory or its ``manifest.json``.

    Returns:
        uint8 ndarray ``[N, H, W, C]``.
    """
    from PIL import Image

    path = Path(source)
    root = path.parent if path.is_file() else path
    manifest = json.loads((root / "manifest.json").read_text())
    shards = manifest.get("shards")
    names = [s["name"] if isinstance(s, dict) else str(s) for s in shards] if shards else None
    tars = [root / n for n in names] if names else sorted(root.glob("*.tar"))
    images = []
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            members = sorted((m for m in tar.getmembers() if m.name.endswith(".png")), key=lambda m: m.name)
            for m in members:
                arr = np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())))
                images.append(arr[..., None] if arr.ndim == 2 else arr)
    if not images:
        raise ValueError(f"no PNG samples found in the shards of {root}")
    return np.stack(images)


def array_images(path: str | os.PathLike) -> np.ndarray:
    """Images stored in an ``.npz``/``.npy`` file, as uint8 ``[N, H, W, C]``.

    Args:
        path: the file; in an ``.npz`` the first of the keys ``images``, ``x``, ``samples``, ``arr_0``.
            uint8 values are used as they are; floating values are taken to be in ``[-1, 1]`` and quantised.

    Returns:
        uint8 ndarray ``[N, H, W, C]``.
    """
    from .fid import as_nchw
    from .grid import to_uint8

    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path)
    else:
        with np.load(path) as z:
            key = next((k for k in IMAGE_KEYS if k in z), None)
            if key is None:
                raise ValueError(f"{path} holds no images (looked for keys {IMAGE_KEYS}; found {sorted(z.keys())})")
            arr = z[key]
    if arr.dtype == np.uint8:
        return as_nchw(arr).permute(0, 2, 3, 1).numpy()
    return to_uint8(as_nchw(np.asarray(arr, dtype=np.float32)))


def is_stats_file(spec: str) -> bool:
    """True when ``spec`` is an ``.npz`` holding ``mu`` and ``sigma`` (precomputed statistics)."""
    if not (spec.endswith(".npz") and Path(spec).is_file()):
        return False
    with np.load(spec) as z:
        return "mu" in z and "sigma" in z


def load_images(spec: str, n: int | None = None, seed: int = 0, pad_to: int = 32) -> np.ndarray:
    """Resolve an image source spec (see the module docstring) to uint8 ``[N, H, W, C]``.

    Args:
        spec: ``fmnist-test``, ``fmnist-train``, a shard directory/manifest, or an ``.npz``/``.npy`` file.
        n: use this many images (a seeded random subset when smaller than the source); None = all.
        seed: seed of the subset choice.
        pad_to: padding of the Fashion-MNIST specs (0 = keep 28x28).

    Returns:
        uint8 ndarray ``[n, H, W, C]``.
    """
    if spec in ("fmnist-test", "fmnist-train"):
        images = fashion_mnist_images(spec.split("-")[1], pad_to=pad_to)
    elif Path(spec).is_dir() or Path(spec).name == "manifest.json":
        images = shard_images(spec)
    elif Path(spec).suffix in (".npz", ".npy") and Path(spec).is_file():
        images = array_images(spec)
    else:
        raise ValueError(
            f"unknown image source {spec!r}: use fmnist-test, fmnist-train, a shard directory, or an .npz/.npy file"
        )
    return subset(images, n, seed)


def subset(images: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """The subset rule: all images when ``n`` is None or >= N, else a sorted seeded random choice.

    Args:
        images: ``[N, ...]``.
        n: wanted count.
        seed: ``numpy.random.default_rng`` seed.

    Returns:
        ``[min(n, N), ...]``.
    """
    if n is None or n >= len(images):
        return images
    idx = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))
    return images[idx]
