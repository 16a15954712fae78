"""Per-rank bytes of parameters + optimizer state of the two trained networks, ZeRO stage 0 vs 3 (and 1, 2).

Runs ``fastui.train`` once per stage on N ranks (torchrun; CPU/gloo by default) for a few iterations and reads the
``memory.json`` every run writes (counted by :meth:`fastui.train.engines.Engine.state_bytes` after the first step,
when the optimizer state exists). One CSV row per stage and precision goes to ``bench/results/memory.csv``.

    DS_ACCELERATOR=cpu python -m bench.memory                         # tiny_cpu config, 2 ranks, stages 0 and 3
    DS_ACCELERATOR=cpu python -m bench.memory --stages 0 1 2 3 --precision fp32 bf16 --nproc 2

Expected: stage 3 over 2 ranks holds about half of stage 0 plus DeepSpeed's fp32 master partition (a separate
copy next to the fp32 parameter partition), i.e. ~2/3 in fp32; in bf16 the parameters shrink and the ratio drops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(config: str, stage: int, precision: str, nproc: int, extra: list[str]) -> dict:
    """Run one short training and return rank 0's and the mean per-rank byte counts."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env.setdefault("DS_ACCELERATOR", "cpu")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29700 + stage), "-m", "fastui.train", "--config", config, f"--run.out_dir={tmp}",
               "--run.name=mem", f"--engine.zero_stage={stage}", f"--engine.precision={precision}",
               "--engine.backend=deepspeed", "--run.progress=false", "--run.tensorboard=false",
               "--run.grid_every_images=0", *extra]
        r = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(f"stage {stage} {precision} failed:\n{r.stderr[-3000:]}")
        rows = json.loads((Path(tmp) / "mem" / "memory.json").read_text())
    per_rank = [sum(v for k, v in row.items() if k.endswith("_bytes")) for row in rows]
    return {"params_optim_bytes_rank0": per_rank[0], "params_optim_bytes_mean": sum(per_rank) / len(per_rank),
            "param_bytes_rank0": rows[0]["generator_param_bytes"] + rows[0]["fake_param_bytes"],
            "optim_bytes_rank0": rows[0]["generator_optim_bytes"] + rows[0]["fake_optim_bytes"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/tiny_cpu.toml")
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--precision", nargs="+", default=["fp32"])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.csv"))
    args, extra = ap.parse_known_args(argv)
    extra = extra or ["--run.duration_images=8", "--batch.global_size=8", "--batch.micro=4"]
    from bench.common import append_csv, provenance

    rows = []
    for precision in args.precision:
        base = None
        for stage in args.stages:
            m = measure(args.config, stage, precision, args.nproc, extra)
            base = base or (m["params_optim_bytes_rank0"] if stage == 0 else None)
            ratio = m["params_optim_bytes_rank0"] / base if base else float("nan")
            row = {"bench": "zero_memory", "config": args.config, "ranks": args.nproc, "stage": stage,
                   "precision": precision, **m, "ratio_vs_stage0": round(ratio, 4), **provenance("cpu"),
                   "command": "python -m bench.memory " + " ".join(argv if argv is not None else sys.argv[1:])}
            print(json.dumps({k: row[k] for k in ("stage", "precision", "params_optim_bytes_rank0",
                                                  "ratio_vs_stage0")}), flush=True)
            rows.append(row)
    print("wrote", append_csv(args.out, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
