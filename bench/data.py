"""Data pipeline throughput: shard writing and ShardLoader decode + normalise + batch, as CSV rows.

Usage (from the repository root):
    python -m bench.data            # Fashion-MNIST train split (60000 images, 32x32 padded)
    python -m bench.data --quick    # first 6000 images, fewer batches

Rows are appended to bench/results/data.csv with provenance (date, git SHA, device, versions). Measured:
    write        ``fastui shards fashion-mnist --pad-to 32`` rate (images/s) with the given writer processes
    load         ShardLoader (resampled, shuffle buffer 1000) uint8 batches + ``normalize`` to [-1, 1] on the
                 device, images/s over the timed batches, and p20/p50/p80 of the wait per batch
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastui.data.importers import fashion_mnist_source
from fastui.data.loader import ShardLoader, normalize
from fastui.data.transforms import make_transform
from fastui.data.writer import write_shards

RESULTS = Path(__file__).resolve().parent / "results" / "data.csv"
FIELDS = [
    "date",
    "git_sha",
    "device",
    "python",
    "torch",
    "webdataset",
    "pillow",
    "numpy",
    "cpu_count",
    "bench",
    "workers",
    "batch_size",
    "images",
    "seconds",
    "images_per_s",
    "ms_per_batch_p20",
    "ms_per_batch_p50",
    "ms_per_batch_p80",
    "notes",
]


def _git_sha() -> str:
    # Local helper: bench/common.py (kernels helper) did not exist when this was written.
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            check=False,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{platform.processor() or platform.machine()}"


def provenance(device: torch.device) -> dict:
    """Date, git SHA, device and library versions for one CSV row."""
    import PIL
    import webdataset

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
        "device": _device(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "webdataset": webdataset.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
    }


def append_rows(rows: list[dict], path: Path = RESULTS) -> None:
    """Append rows to the CSV (header written when the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def bench_write(out: Path, limit: int, workers: int) -> dict:
    """Time writing Fashion-MNIST (padded to 32) shards; returns a partial CSV row."""
    source = fashion_mnist_source()
    t0 = time.perf_counter()
    manifest = write_shards(
        source,
        out,
        transform=make_transform(pad_to=32),
        shard_size=1000,
        workers=workers,
        limit=limit,
        overwrite=True,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    return {
        "bench": "write",
        "workers": workers,
        "batch_size": "",
        "images": manifest["total"],
        "seconds": round(seconds, 3),
        "images_per_s": round(manifest["total"] / seconds, 1),
        "notes": "fashion-mnist pad-to 32, png level 1, shard 1000",
    }


def bench_load(shards: Path, workers: int, batch_size: int, batches: int, warmup: int, device: torch.device) -> dict:
    """Time ShardLoader batches normalised on ``device``; returns a partial CSV row."""
    loader = ShardLoader(
        shards, batch_size, num_workers=workers, resampled=True, seed=0, pin_memory=device.type == "cuda"
    )
    it = iter(loader)
    for _ in range(warmup):  # worker start-up and the first shard reads are not throughput
        normalize(next(it)["image"], device)
    waits = []
    t0 = time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        x = normalize(next(it)["image"], device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        waits.append(time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    del it, x
    p20, p50, p80 = np.percentile(np.asarray(waits) * 1e3, [20, 50, 80])
    return {
        "bench": "load",
        "workers": workers,
        "batch_size": batch_size,
        "images": batches * batch_size,
        "seconds": round(seconds, 3),
        "images_per_s": round(batches * batch_size / seconds, 1),
        "ms_per_batch_p20": round(p20, 3),
        "ms_per_batch_p50": round(p50, 3),
        "ms_per_batch_p80": round(p80, 3),
        "notes": f"decode png + batch in workers, normalize on {device.type}, shuffle buffer 1000",
    }


def main(argv: list[str] | None = None) -> int:
    """Run the data benchmarks and append CSV rows; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="6000 images, fewer batches")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"CSV file (default {RESULTS})")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--write-workers", type=int, default=2)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    limit = 6000 if args.quick else None
    batches, warmup = (10, 2) if args.quick else (60, 5)
    prov = provenance(device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastui-bench-data-") as tmp:
        shards = Path(tmp) / "fmnist32"
        rows.append(bench_write(shards, limit, args.write_workers))
        for workers in (0, 2):
            rows.append(bench_load(shards, workers, args.batch_size, batches, warmup, device))
    rows = [{**prov, **{k: "" for k in FIELDS if k not in prov}, **r} for r in rows]
    append_rows(rows, args.out)
    for r in rows:
        print(
            f"{r['bench']:<5} workers={r['workers']} images/s={r['images_per_s']:>9} "
            f"p50 ms/batch={r['ms_per_batch_p50']} ({r['images']} images, {r['seconds']} s)"
        )
    print(f"appended {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
