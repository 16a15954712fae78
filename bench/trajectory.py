"""FID trajectory of a distillation run whose snapshots live on another machine (a lent GPU without the Inception
file): sample there, score here.

Why: the standard Inception network (87 MB) is larger than what travels to a lent GPU machine, and a snapshot is
~7 MB; the demo's 300 evaluation images of one snapshot are 300 KB as uint8. ``sample`` draws the demo's evaluation
noise and labels (:func:`fastui.demo.evaluation_draws`) through every snapshot of the given run directories in one
step and stores the uint8 images (the quantisation FID applies anyway, :func:`fastui.eval.grid.to_uint8`) in one
``.npz``; ``fid`` scores each entry against the demo's reference statistics, exactly as ``fastui demo --fid-of``
scores a checkpoint (up to the sampling device's float rounding).

Usage::

    python -m bench.trajectory sample RUN_DIR [RUN_DIR ...] --out samples.npz [--n 300] [--device cuda]
    python -m bench.trajectory fid samples.npz [--ref STATS.npz] [--csv trajectory.csv]

A RUN_DIR is a demo output (``OUT``) or its ``OUT/distill``: its ``snapshots/<images>/`` and ``generator_ema/``
checkpoints are sampled; entries are named ``<run>/<images or 'final'>``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch


def _checkpoints(run: Path) -> list[tuple[str, Path]]:
    """``[(entry name, checkpoint dir)]`` of a run directory: snapshots in image order, then the final EMA."""
    from fastui.teachers import is_checkpoint_dir

    d = run / "distill" if (run / "distill").is_dir() else run
    snaps = sorted((s for s in (d / "snapshots").glob("*") if s.name.isdigit()), key=lambda s: int(s.name))
    out = [(f"{run.name}/{int(s.name)}", s) for s in snaps if is_checkpoint_dir(s)]
    if is_checkpoint_dir(d / "generator_ema"):
        out.append((f"{run.name}/final", d / "generator_ema"))
    return out


@torch.no_grad()
def sample(runs: list[str], out: str, n: int, device: str, sigma_init: float, batch: int) -> int:
    from fastui.demo import evaluation_draws, sample_all
    from fastui.eval.grid import to_uint8
    from fastui.sample import one_step
    from fastui.teachers import load_checkpoint

    entries = [e for r in runs for e in _checkpoints(Path(r))]
    if not entries:
        print(f"trajectory: no checkpoints under {', '.join(runs)}", file=sys.stderr)
        return 2
    arrays = {}
    for name, ckpt in entries:
        net = load_checkpoint(ckpt, device=device).eval()
        shape = (net.img_channels, net.img_resolution, net.img_resolution)
        z, labels = evaluation_draws(n, shape, int(net.label_dim or 0))
        images, _ = sample_all(lambda zb, lb, net=net: one_step(net, zb.to(device), None if lb is None else
                                                                lb.to(device), sigma_init).cpu(),
                               z, labels, batch, name, progress=False)
        arrays[name] = to_uint8(images)
        print(f"{name}: {n} images", flush=True)
    tmp = Path(out).with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    print(f"trajectory: {len(arrays)} entries -> {out}")
    return 0


def fid(path: str, ref: str, csv_out: str | None) -> int:
    from fastui.demo import DEFAULT_REF
    from fastui.eval.fid import InceptionFeatures, frechet_distance, load_stats, stats

    data = np.load(path)
    ref_stats = load_stats(Path(ref or DEFAULT_REF))
    net, rows = InceptionFeatures("cpu"), []
    for name in data.files:
        imgs = data[name]
        f = frechet_distance(*stats(net.features_from_uint8(imgs, progress=False)), ref_stats["mu"],
                             ref_stats["sigma"])
        rows.append({"entry": name, "n": imgs.shape[0], "fid": round(f, 4)})
        print(f"{name}: FID {f:.2f} (n = {imgs.shape[0]})", flush=True)
    if csv_out:
        with open(csv_out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["entry", "n", "fid"])
            w.writeheader()
            w.writerows(rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.trajectory", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="sample every snapshot of run directories to one .npz (uint8)")
    s.add_argument("runs", nargs="+")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=300)
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--sigma-init", type=float, default=2.5)
    s.add_argument("--batch", type=int, default=100)
    f = sub.add_parser("fid", help="FID of every entry of a samples .npz")
    f.add_argument("samples")
    f.add_argument("--ref", default="")
    f.add_argument("--csv", default=None)
    a = p.parse_args(argv)
    if a.cmd == "sample":
        return sample(a.runs, a.out, a.n, a.device, a.sigma_init, a.batch)
    return fid(a.samples, a.ref, a.csv)


if __name__ == "__main__":
    sys.exit(main())
