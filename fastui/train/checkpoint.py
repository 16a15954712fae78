"""Atomic training checkpoints with exact resume.

Layout of ``<run>/checkpoints/``::

    ckpt-000000012/            one complete checkpoint (iteration 12)
        meta.json              counters, world size, stage; written LAST, so its presence marks completeness
        generator/ fake/       DeepSpeed checkpoints (every rank's ZeRO shards) or torch state dicts
        rank00000.pt ...       per rank: EMA shadow, RNG states (python, numpy, torch, cuda), data-loader position
    .tmp-ckpt-000000015/       being written (never picked up)

Every rank writes into the temporary directory, a barrier, then rank 0 writes ``meta.json`` and renames the directory
(an atomic rename on one file system; multi-node runs need a shared file system for the run directory). ``--resume
auto`` takes the newest ``ckpt-*`` directory that has a ``meta.json``; a write killed half-way leaves only a
``.tmp-`` directory, which is ignored and deleted by the next save.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["find_latest", "load", "rng_state", "save", "set_rng_state"]

_NAME = re.compile(r"^ckpt-(\d{9})$")


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rng_state() -> dict:
    """Python, numpy, torch CPU and (if present) CUDA generator states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_latest(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint (a ``ckpt-*`` directory with ``meta.json``), or None."""
    if not ckpt_dir.is_dir():
        return None
    found = sorted((p for p in ckpt_dir.iterdir() if _NAME.match(p.name) and (p / "meta.json").is_file()),
                   key=lambda p: int(_NAME.match(p.name).group(1)))
    return found[-1] if found else None


def save(ckpt_dir: Path, iteration: int, meta: dict, engines: dict, per_rank: dict, keep_last: int,
         fault_hook=None) -> Path:
    """Write a checkpoint (collective: every rank calls it).

    Args:
        ckpt_dir: ``<run>/checkpoints``.
        iteration: iterations completed (names the directory).
        meta: counters and settings (JSON), written by rank 0 last.
        engines: ``{"generator": Engine, "fake": Engine}``; their ``save`` is collective under DeepSpeed.
        per_rank: this rank's EMA / data position (torch-saveable); RNG states are added here.
        keep_last: complete checkpoints to keep.
        fault_hook: test hook called after the shards are written and before the rename.

    Returns:
        The final directory.
    """
    final = ckpt_dir / f"ckpt-{iteration:09d}"
    tmp = ckpt_dir / f".tmp-ckpt-{iteration:09d}"
    if _rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_dir.glob(".tmp-ckpt-*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    for name, eng in engines.items():
        eng.save(tmp / name)
    torch.save({**per_rank, "rng": rng_state()}, tmp / f"rank{_rank():05d}.pt")
    _barrier()
    if fault_hook is not None:
        fault_hook()
    if _rank() == 0:
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.replace(tmp, final)
        complete = sorted((p for p in ckpt_dir.iterdir() if _NAME.match(p.name) and (p / "meta.json").is_file()),
                          key=lambda p: p.name)
        for old in complete[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load(path: Path, engines: dict, lr_scale_of=None) -> tuple[dict, dict]:
    """Restore engines from a checkpoint; returns ``(meta, this rank's per-rank dict)`` (RNG states already set).
    ``lr_scale_of(meta)``: the learning-rate decay's multiplier at the checkpoint's last iteration (default 1)."""
    meta = json.loads((path / "meta.json").read_text())
    scale = lr_scale_of(meta) if lr_scale_of is not None else 1.0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if meta.get("world") != world:
        raise RuntimeError(f"checkpoint {path} was written by {meta.get('world')} ranks, this run has {world}")
    for name, eng in engines.items():
        for key, (saved, now) in eng.load(path / name, scale).items():
            if _rank() == 0:
                print(f"fastui train: {name} optimizer {key} {saved} -> {now} (this run's config)", file=sys.stderr)
    per_rank = torch.load(path / f"rank{_rank():05d}.pt", map_location="cpu", weights_only=False)
    set_rng_state(per_rank["rng"])
    return meta, per_rank
