"""The parameter average of a run's EMA snapshots, written as one generator checkpoint directory.

Why: on issue 7's longer trajectory the FID moves by 1-2 points (n = 300 and n = 2,000 alike) between EMA snapshots
16,000 images apart (``bench/results/longer_config.md``), so no one snapshot is the trajectory's level. The mean of a
few consecutive snapshots is a longer average of the same trajectory (post hoc, as EDM2's post-hoc EMA), still a
one-step generator of the same architecture, scored like any other::

    python -m bench.average_snapshots runs/cpu_long/refresh/snapshots/000{352,368,384}000 --out runs/avg/s352_384
    fastui eval --ref fastui/assets/fmnist_test_pad32_stats.npz --generator runs/avg/s352_384 --n 2000 --seeds 0

Every input is a fastui checkpoint directory (``arch.json`` + ``weights.pt``: what ``run.snapshot_every_images``
writes, or ``generator_ema``) of the same architecture and the same parameter names and shapes; floating-point
tensors are averaged in fp64 and stored in their own dtype, others (integer buffers) must agree and are copied.
``--weights`` gives unequal weights (normalised). Errors write nothing (exit 2); the output is written atomically
(``fastui.teachers.save_checkpoint``) with the inputs and weights in ``OUT/averaged_from.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


class AverageError(Exception):
    """Inputs that cannot be averaged (nothing written)."""


def average(dirs: list[Path], weights: list[float] | None = None) -> tuple[dict, dict, list[float]]:
    """(arch, state_dict, normalised weights): the weighted mean of the checkpoints in ``dirs``."""
    from fastui.teachers import ARCH_FILE, WEIGHTS_FILE

    if not dirs:
        raise AverageError("no snapshot directories given")
    weights = [1.0] * len(dirs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(dirs) or any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise AverageError(f"--weights: {len(dirs)} non-negative numbers with a positive sum, got {weights}")
    total = sum(weights)
    weights = [w / total for w in weights]
    arch, acc, first = None, {}, None
    for d, w in zip(dirs, weights, strict=True):
        if not (d / ARCH_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
            raise AverageError(f"{d}: not a checkpoint directory ({ARCH_FILE} + {WEIGHTS_FILE})")
        a = json.loads((d / ARCH_FILE).read_text())
        state = torch.load(d / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        if arch is None:
            arch, first = a, state
            acc = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items() if v.is_floating_point()}
        elif a != arch:
            raise AverageError(f"{d}: another architecture than {dirs[0]} ({ARCH_FILE} differs)")
        if state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first):
            raise AverageError(f"{d}: other parameter names or shapes than {dirs[0]}")
        for k, v in state.items():
            if k in acc:
                acc[k] += v.double() * w
            elif not torch.equal(v, first[k]):
                raise AverageError(f"{d}: non-float tensor {k} differs from {dirs[0]}'s")
    return arch, {k: acc[k].to(v.dtype) if k in acc else v for k, v in first.items()}, weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.average_snapshots", description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", type=Path, nargs="+", help="checkpoint directories (arch.json + weights.pt)")
    ap.add_argument("--out", type=Path, required=True, help="the averaged checkpoint directory (must not exist)")
    ap.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per directory (normalised)")
    a = ap.parse_args(argv)
    try:
        if a.out.exists():
            raise AverageError(f"{a.out} exists: nothing written")
        arch, state, weights = average(a.dirs, a.weights)
    except AverageError as e:
        print(f"average_snapshots: {e}", file=sys.stderr)
        return 2
    from fastui.teachers import save_checkpoint

    save_checkpoint(None, a.out, arch=arch, state_dict=state)
    (a.out / "averaged_from.json").write_text(json.dumps(
        {"dirs": [str(d) for d in a.dirs], "weights": weights}, indent=1))
    print(f"average_snapshots: {len(a.dirs)} checkpoints -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
