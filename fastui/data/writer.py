"""Webdataset shard writer: a :class:`~fastui.data.importers.Source` -> ``DIR/{prefix}-000000.tar`` + manifest.

Shard layout (webdataset convention: files of one sample share a key and sit next to each other):
    ``{key}.png``   the image, PNG (lossless; grayscale or RGB)
    ``{key}.cls``   the class id as ASCII digits (-1 when unlabelled)
    ``{key}.json``  small metadata: {"index": global index, "label": id, ...source info (file name or index)}
The key is the zero-padded global sample index, so a reader can map a sample back to (shard, position) and detect
missing samples. Tar headers carry fixed mtime/owner so the same input gives byte-identical shards (stable sha256).

``manifest.json`` holds the format version, total and per-shard counts, first index and sha256 of every shard,
class names, image height/width/channels and the preprocessing used; ``labels.npy`` (int64 [total]) repeats the
class ids so evaluation can pick class-balanced subsets without reading the shards.

Atomicity: everything is written into a hidden temporary folder next to ``out`` and renamed into place only when
every shard succeeded; on any error the temporary folder is removed, so no partial shard is ever left behind.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np

from fastui.data.importers import DataError, Source

MANIFEST = "manifest.json"
LABELS = "labels.npy"
FORMAT = "fastui-shards"
FORMAT_VERSION = 1

# The source and transform live in module globals so forked pool workers inherit them without pickling arrays.
_WORK: dict = {}


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG-encode uint8 [H, W, C] (C = 1 or 3). Level 1: PNG is lossless at any level, and fast writing matters
    more than ~10% smaller shards."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
        buf, format="PNG", compress_level=compress_level
    )
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _write_shard(job: tuple[int, int, int, str]) -> dict:
    """Write samples [start, stop) into one shard file; returns its manifest entry (plus the image shape)."""
    _, start, stop, path = job
    source, transform = _WORK["source"], _WORK["transform"]
    shape, labels = None, []
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(start, stop):
            image, label, meta = source.load(i)
            image = transform(image)
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise DataError(
                    f"sample {i} ({meta}) has shape {image.shape} after preprocessing, others {shape}: "
                    f"use --transform/--resolution (size) and --channels 1|3 to make all images the same size"
                )
            labels.append(int(label))
            key = f"{i:08d}"
            _add(tar, f"{key}.png", encode_png(image))
            _add(tar, f"{key}.cls", str(int(label)).encode())
            _add(tar, f"{key}.json", json.dumps({"index": i, "label": int(label), **meta}).encode())
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {
        "name": Path(path).name,
        "count": stop - start,
        "first_index": start,
        "sha256": digest,
        "bytes": os.path.getsize(path),
        "_shape": list(shape),
        "_labels": labels,
    }


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise DataError(f"output {out} exists and is not empty (use --overwrite to replace it)")


def write_shards(
    source: Source,
    out: str | os.PathLike,
    *,
    transform=None,
    shard_size: int = 1000,
    prefix: str = "train",
    workers: int = 0,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Write ``source`` as tar shards plus ``manifest.json`` into ``out``, atomically.

    Args:
        source: the samples (see :mod:`fastui.data.importers`).
        out: output folder; must not exist or be empty unless ``overwrite``.
        transform: per-image preprocessing ``f(uint8 [H, W, C]) -> uint8 [H', W', C']`` (default identity).
        shard_size: samples per shard (the last shard may hold fewer).
        prefix: shard name prefix, e.g. ``train`` -> ``train-000000.tar``.
        workers: worker processes (0 = write in this process).
        limit: write only the first ``limit`` samples (quick tests/subsets).
        overwrite: replace an existing non-empty ``out``.
        progress: show a tqdm progress bar (samples).
        extra: more fields for the manifest (e.g. the preprocessing options).

    Returns:
        The manifest dict (also written to ``out/manifest.json``).

    Raises:
        DataError: bad output folder, unreadable sample, inconsistent image sizes. Nothing is left behind.
    """
    out = Path(out)
    _check_out(out, overwrite)
    n = len(source) if limit is None else min(limit, len(source))
    if n <= 0:
        raise DataError(f"nothing to write: {source.name} has no samples")
    if shard_size <= 0:
        raise DataError(f"--shard-size must be positive, got {shard_size}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    jobs = [
        (k, s, min(s + shard_size, n), str(tmp / f"{prefix}-{k:06d}.tar"))
        for k, s in enumerate(range(0, n, shard_size))
    ]
    _WORK.update(source=source, transform=transform or (lambda x: x))
    t0 = time.perf_counter()
    try:
        entries = _run_jobs(jobs, workers, n, progress)
        shapes = {tuple(e.pop("_shape")) for e in entries}
        # Labels also go to labels.npy so the evaluation reader can balance classes without reading the shards.
        np.save(tmp / LABELS, np.concatenate([np.asarray(e.pop("_labels"), dtype=np.int64) for e in entries]))
        if len(shapes) != 1:
            raise DataError(
                f"images differ in size across shards: {sorted(shapes)}; "
                "use --transform/--resolution (size) and --channels 1|3"
            )
        height, width, channels = shapes.pop()
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "source": source.name,
            "split": prefix,
            "total": n,
            "num_shards": len(entries),
            "shard_size": shard_size,
            "image": {"height": height, "width": width, "channels": channels, "encoding": "png"},
            "class_names": list(source.class_names),
            "labels_file": LABELS,
            "num_classes": len(source.class_names),
            "shards": entries,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "write_seconds": round(time.perf_counter() - t0, 3),
            **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _WORK.clear()
    return manifest


def _run_jobs(jobs: list, workers: int, n: int, progress: bool) -> list[dict]:
    from tqdm import tqdm

    bar = tqdm(total=n, unit="img", desc="shards", disable=not progress)
    entries = []
    try:
        if workers <= 0 or len(jobs) == 1:
            for job in jobs:
                entries.append(_write_shard(job))
                bar.update(entries[-1]["count"])
        else:
            # fork: workers inherit _WORK (the source's arrays) without pickling; imap keeps shard order.
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(min(workers, len(jobs))) as pool:
                for entry in pool.imap(_write_shard, jobs):
                    entries.append(entry)
                    bar.update(entry["count"])
    finally:
        bar.close()
    return entries


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an existing ``out`` is swapped out first and deleted afterwards."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{time.time_ns()}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(source: str | os.PathLike) -> tuple[dict, Path]:
    """Load a manifest from a shard folder or the manifest path.

    Returns:
        (manifest dict, folder holding the shards).
    """
    path = Path(source)
    if path.is_dir():
        path = path / MANIFEST
    if not path.exists():
        raise DataError(f"no shard manifest at {path} (write shards with `fastui shards ...`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"unreadable manifest {path}: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a fastui shard manifest")
    return manifest, path.parent


def verify_shards(source: str | os.PathLike) -> list[str]:
    """Check every shard's size and sha256 against the manifest.

    Returns:
        Problems found ([] = all shards intact).
    """
    manifest, root = read_manifest(source)
    problems = []
    for entry in manifest["shards"]:
        path = root / entry["name"]
        if not path.exists():
            problems.append(f"{entry['name']}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            problems.append(f"{entry['name']}: sha256 mismatch")
    return problems
