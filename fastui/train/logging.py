"""Run logging on rank 0: tqdm progress bar (images/s, losses), CSV rows and TensorBoard scalars.

The trainer calls :meth:`RunLogger.log` every ``log_every`` iterations with host floats from
:meth:`fastui.train.step.Stats.flush`, the only host sync of the loop.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

__all__ = ["RunLogger"]


class RunLogger:
    """CSV + TensorBoard + progress bar. Inactive (all no-ops) on ranks other than 0 or without a run directory."""

    def __init__(self, run_dir: Path | None, total_iterations: int, start_iteration: int, images_per_iteration: int,
                 *, active: bool, tensorboard: bool = True, progress: bool = True):
        self.active = active and run_dir is not None
        self.images_per_iteration = images_per_iteration
        self.csv_path = run_dir / "log.csv" if run_dir is not None else None
        self.columns: list[str] | None = None
        self.tb = None
        self.bar = None
        self._t0, self._it0 = time.perf_counter(), start_iteration
        if self.active and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # TensorBoard is optional
                self.tb = None
                print("fastui train: run.tensorboard = true, but the tensorboard package is not installed: no tb/ "
                      "(pip install tensorboard, or --run.tensorboard=false)", file=sys.stderr, flush=True)
        if active and progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_iterations, initial=start_iteration, unit="it", dynamic_ncols=True)
        if self.active and self.csv_path.exists():  # a resumed run appends to the same CSV
            self._keep_rows_up_to(start_iteration)

    def _keep_rows_up_to(self, iteration: int) -> None:
        """Drop rows logged after ``iteration`` (by a run killed after its last checkpoint, or an earlier run
        started over), so a resumed run's CSV has each iteration once; rewrites the file atomically."""
        text = self.csv_path.read_text()
        lines = text.splitlines()
        if not lines or not lines[0]:
            return
        width = len(lines[0].split(","))
        whole = lines[1:] if text.endswith("\n") else lines[1:-1]  # a kill in mid-write cuts the last row short
        rows = [line for line in whole if _iteration_of(line, width) <= iteration]
        if not rows:
            self.csv_path.unlink()
            return
        self.columns = lines[0].split(",")
        if len(rows) < len(lines) - 1:
            self._rewrite([lines[0], *rows])

    def _rewrite(self, lines: list[str]) -> None:
        """Replace the CSV atomically (a kill leaves the old file or the new one, never half of one)."""
        tmp = self.csv_path.with_suffix(".csv.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.csv_path)

    def log(self, iteration: int, images: int, values: dict[str, float]) -> dict[str, float]:
        """Write one row; returns the row (with ``images_per_s``)."""
        now = time.perf_counter()
        rate = (iteration - self._it0) * self.images_per_iteration / max(now - self._t0, 1e-9)
        self._t0, self._it0 = now, iteration
        row = {"iteration": iteration, "images": images, "images_per_s": rate, **values}
        if self.bar is not None:
            self.bar.n = iteration
            short = {k: f"{v:.4g}" for k, v in row.items() if k.startswith("loss_")}
            self.bar.set_postfix(img_s=f"{rate:.1f}", **short, refresh=False)
            self.bar.refresh()
        if not self.active:
            return row
        if self.columns is None:
            self.columns = list(row)
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        extra = [k for k in row if k not in self.columns]
        if extra:  # a new statistic (e.g. the GAN loss after its start): rewrite the header, keep old rows
            self.columns += extra
            self._rewrite([",".join(self.columns), *self.csv_path.read_text().splitlines()[1:]])
        with open(self.csv_path, "a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(c) is None else row.get(c) for c in self.columns])
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("iteration", "images") and v is not None:
                    self.tb.add_scalar(k, v, images)
            self.tb.flush()
        return row

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _iteration_of(line: str, width: int) -> float:
    """The iteration of a CSV row; ``inf`` (dropped on resume) for a garbled one. Rows written before a statistic
    was added to the header are narrower than it; none is wider."""
    fields = line.split(",")
    try:
        return int(fields[0]) if 1 < len(fields) <= width else float("inf")
    except ValueError:
        return float("inf")
