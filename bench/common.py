"""Provenance and timing helpers shared by the benchmarks (kernels, step, data).

Every performance claim is a CSV row with provenance (STYLE.md 10): :func:`provenance` gives device, versions, git
SHA and date; :func:`time_ms` gives p20/p50/p80 of a callable; :func:`append_csv` appends rows under a fixed header.

Example:
    >>> from bench.common import provenance, time_ms
    >>> stats = time_ms(lambda: sum(range(1000)), reps=5, warmup=1, device="cpu")
    >>> sorted(stats) == ["p20_ms", "p50_ms", "p80_ms"]
    True
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def git_sha(short: bool = True) -> str:
    """The repository's HEAD commit (``+dirty`` if the tree has changes), or ``"unknown"`` outside git."""
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"] if short else ["git", "rev-parse", "HEAD"]
        sha = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
        out = sha.stdout.strip().splitlines()
        if sha.returncode != 0 or not out:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return out[-1] + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str | torch.device) -> str:
    """GPU model name, or the CPU model and thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    """``torch``, ``cuda``, ``triton``, ``python`` versions (``"none"`` where absent)."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - optional, and a broken install must not stop a benchmark
        triton_version = "none"
    return {"torch": torch.__version__, "cuda": torch.version.cuda or "none", "triton": triton_version,
            "python": platform.python_version()}


def provenance(device: str | torch.device) -> dict[str, str]:
    """The columns every benchmark row carries: date, git SHA, device, versions, host."""
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "git_sha": git_sha(),
            "device": device_name(device), **versions(), "host": platform.node()}


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] of ``values``."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def time_ms(fn: Callable[[], object], *, reps: int = 20, warmup: int = 3, device: str | torch.device = "cpu",
            max_seconds: float | None = None) -> dict[str, float]:
    """Time ``fn`` ``reps`` times (after ``warmup`` calls), synchronising the device around each call.

    Args:
        max_seconds: stop early (with at least 3 samples) once this much time was spent timing.

    Returns:
        ``{"p20_ms", "p50_ms", "p80_ms"}``.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and len(samples) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return {f"p{q}_ms": percentile(samples, q) for q in (20, 50, 80)}


def copy_bandwidth_gbs(device: str | torch.device, nbytes: int = 256 << 20, reps: int = 10) -> float:
    """Measured copy bandwidth (bytes read + written per second, GB/s) of a ``nbytes`` buffer on ``device``."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    stats = time_ms(lambda: dst.copy_(src), reps=reps, warmup=2, device=device)
    return 2 * nbytes / (stats["p50_ms"] * 1e-3) / 1e9


def append_csv(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Append ``rows`` to the CSV at ``path`` (created with a header). A file with another header is not mixed:
    the rows go to ``<stem>.<n>.csv`` beside it instead. Returns the path written."""
    rows = list(rows)
    path = Path(path)
    if not rows:
        return path
    fields = list(rows[0].keys())
    for row in rows[1:]:
        fields += [k for k in row if k not in fields]
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    target = path
    while target.exists():
        with open(target, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header == fields:
            break
        target = path.with_name(f"{path.stem}.{n}{path.suffix}")
        n += 1
    new = not target.exists()
    with open(target, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return target
