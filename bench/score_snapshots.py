"""FID of a resumable run's EMA snapshots, appended to a results CSV: only the snapshots the CSV does not hold yet.

``python -m bench.score_snapshots RUN_DIR --csv bench/results/X.csv [--variant NAME] [--config TOML]
[--overrides "KEY=VALUE ..."] [--n 300] [--final]``

``RUN_DIR`` is a ``fastui.train`` run directory (``<run.out_dir>/<run.name>``) written with
``run.snapshot_every_images``; each ``snapshots/<images>/`` is scored with the demo's evaluation draws and reference
(:func:`fastui.demo.fid_of`, the numbers of the README's tables), and ``--final`` adds ``generator_ema`` (the export at
the run's last stop) under the image count of its newest checkpoint. One row per snapshot: device, torch, git SHA,
config file and overrides as given (the run's ``config.json`` holds the merged settings), variant (default: the run's
name), iterations, images, FID, where it was scored. A later session that resumes the run calls the same command and
gets the new rows only.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
from pathlib import Path

COLUMNS = ["device", "torch", "git", "config", "variant", "overrides", "iterations_at_snapshot", "snapshot_images",
           "fid_n300", "fid_scored_on"]


def scored_images(csv_path: Path, variant: str) -> set[int]:
    """Snapshot image counts the CSV already holds for ``variant``."""
    if not csv_path.is_file():
        return set()
    with open(csv_path, newline="") as f:
        return {int(r["snapshot_images"]) for r in csv.DictReader(f) if r["variant"] == variant}


def pending(run_dir: Path, done: set[int], final: bool) -> list[tuple[int, Path]]:
    """``[(images, generator dir)]`` not in ``done``, in image order; the final export counts at its checkpoint."""
    from fastui.teachers import is_checkpoint_dir

    out = [(int(p.name), p) for p in (run_dir / "snapshots").glob("*") if p.name.isdigit() and is_checkpoint_dir(p)]
    if final and is_checkpoint_dir(run_dir / "generator_ema"):
        ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*/meta.json"))
        if ckpts:
            images = int(json.loads(ckpts[-1].read_text())["images"])
            if images not in {i for i, _ in out}:
                out.append((images, run_dir / "generator_ema"))
    return sorted((i, p) for i, p in out if i not in done)


def _device() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    import torch

    return f"CPU {torch.get_num_threads()} threads ({model})"


def _git_sha() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return r.stdout.strip() or "unknown"


def main(argv: list[str] | None = None, fid_fn=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--csv", type=Path, required=True, help="results CSV (created with a header if missing)")
    p.add_argument("--variant", default=None, help="variant name in the CSV (default: the run directory's name)")
    p.add_argument("--n", type=int, default=300, help="FID samples (the demo's evaluation draws)")
    p.add_argument("--final", action="store_true", help="also score generator_ema at its checkpoint's image count")
    p.add_argument("--ref", default=None, help="reference statistics (default: the demo's)")
    p.add_argument("--config", default="", help="the run's config file, for the CSV row")
    p.add_argument("--overrides", default="", help="the run's command-line overrides, for the CSV row")
    args = p.parse_args(argv)
    cfg_file = args.run_dir / "config.json"
    if not cfg_file.is_file():
        p.error(f"{cfg_file} not found: RUN_DIR must be a fastui.train run directory")
    if args.n != 300 and args.csv.is_file() and "fid_n300" in args.csv.read_text().split("\n", 1)[0]:
        p.error("this CSV's FID column is fid_n300: score with --n 300, or write to another CSV")
    run_cfg = json.loads(cfg_file.read_text())
    variant = args.variant or args.run_dir.name
    todo = pending(args.run_dir, scored_images(args.csv, variant), args.final)
    if not todo:
        print(f"score_snapshots: nothing new to score for {variant} in {args.csv}")
        return 0
    from fastui import demo

    ref = Path(args.ref) if args.ref else demo.DEFAULT_REF
    fid_fn = fid_fn or (lambda path: demo.fid_of([str(path)], teacher_spec=run_cfg["config"]["teacher"]["spec"],
                                                  n=args.n, ref=ref, progress=False)[0][1])
    import torch

    batch = int(run_cfg["config"]["batch"]["global_size"])
    common = {"device": _device(), "torch": torch.__version__, "git": _git_sha(),
              "config": args.config, "variant": variant, "overrides": args.overrides,
              "fid_scored_on": "CPU here (bench.score_snapshots)"}
    new = not args.csv.is_file()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    for images, path in todo:
        fid = fid_fn(path)
        with open(args.csv, "a", newline="") as f:  # one row per score: an interruption keeps what was measured
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
                new = False
            w.writerow({**common, "iterations_at_snapshot": images // batch, "snapshot_images": images,
                        "fid_n300": f"{fid:.2f}"})
        print(f"{variant} @ {images:,} images: FID {fid:.2f} (n = {args.n})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
