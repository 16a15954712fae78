"""``python -m fastui.train`` / ``fastui train``: distil a teacher into a one-step generator.

Usage::

    python -m fastui.train --config configs/toy_ring8.toml [--resume auto|CKPT] [--dry-run] [--section.key=value ...]
    torchrun --nproc_per_node 2 -m fastui.train --config ...
    deepspeed --num_gpus 8 --module fastui.train --config ...  (deepspeed appends --local_rank; accepted)
    deepspeed --num_gpus 8 fastui/train/__main__.py --config ...  (the script form; DeepSpeed 0.19 has no -m)
    python -m fastui.train --help-config                       (every key, its default and meaning)

Everything is validated before anything is written: a bad key or value, an unknown divergence, a missing teacher,
data directory or DeepSpeed JSON, or batch sizes that do not divide exit with code 2 and one message.
"""

from __future__ import annotations

import os
import sys

if not __package__:  # script form: drop fastui/train from sys.path, its logging.py would shadow the stdlib's
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from pathlib import Path

from fastui.train.config import ConfigError, describe, load_config, resolve

USAGE = __doc__.split("Usage::", 1)[1].split("Everything", 1)[0]


def _split(argv: list[str]):
    opts = {"config": None, "resume": "", "dry_run": False, "dry_run_iterations": 2, "help": False,
            "help_config": False}
    rest, i = [], 0
    while i < len(argv):
        a = argv[i]
        key, eq, val = a.partition("=")
        if key in ("--config", "--resume", "--dry-run-iterations", "--local_rank", "--local-rank"):
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{key} needs a value")
                val, i = argv[i + 1], i + 1
            if key == "--config":
                opts["config"] = val
            elif key == "--resume":
                opts["resume"] = val
            elif key == "--dry-run-iterations":
                opts["dry_run_iterations"] = int(val)
            # --local_rank: deepspeed's launcher passes it; LOCAL_RANK in the environment says the same
        elif a == "--dry-run":
            opts["dry_run"] = True
        elif a in ("-h", "--help"):
            opts["help"] = True
        elif a == "--help-config":
            opts["help_config"] = True
        else:
            rest.append(a)
        i += 1
    return opts, rest


def check_inputs(cfg, opts) -> None:
    """File-system checks done before anything is written (teacher, data, DeepSpeed JSON, resume path)."""
    import os

    from fastui.train.engines import deepspeed_config
    from fastui.train.models import teacher_exists

    if not opts["dry_run"] and not teacher_exists(cfg.teacher.spec):
        raise ConfigError(f"teacher.spec: teacher {cfg.teacher.spec!r} does not exist (a fastui checkpoint directory "
                          "with arch.json + weights.pt, an EDM .pkl, 'demo', 'gmm:ring8', 'gaussian:<d>' or 'random')")
    src = cfg.data.source
    if not opts["dry_run"] and src not in ("", "synthetic") and not Path(src).exists():
        raise ConfigError(f"data.source: {src!r} does not exist (a shard directory with manifest.json, its "
                          "manifest path, 'synthetic', or '' for teacher samples)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    res = resolve(cfg, world)
    if (res.needs_disc or cfg.batch.labels == "data") and not opts["dry_run"] and src == "" \
            and cfg.teacher.spec.split(":", 1)[0] not in ("gmm", "gaussian"):
        raise ConfigError(f"data.source is empty but method {cfg.loss.method!r} needs real images (GAN or density "
                          "ratio) or batch.labels = 'data'; set data.source, or loss.gan = 'off' and "
                          "loss.ratio = 'off'")
    if cfg.engine.backend == "deepspeed":
        deepspeed_config(cfg, res)
    if opts["resume"] not in ("", "auto") and not (Path(opts["resume"]) / "meta.json").is_file():
        raise ConfigError(f"--resume {opts['resume']!r} is not a complete checkpoint directory (no meta.json)")
    return res


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for configuration errors, nothing written)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        opts, overrides = _split(argv)
        if opts["help"]:
            print("usage:" + USAGE)
            return 0
        if opts["help_config"]:
            print(describe())
            return 0
        if opts["config"] is None and not overrides:
            raise ConfigError("no --config given (e.g. --config configs/toy_ring8.toml)")
        cfg = load_config(opts["config"], overrides)
        if opts["dry_run"]:
            cfg.batch.micro, cfg.batch.grad_accum = 2, 1
            import os

            cfg.batch.global_size = 2 * int(os.environ.get("WORLD_SIZE", "1"))
        res = check_inputs(cfg, opts)
        if not opts["dry_run"]:
            _refuse_overwrite(cfg, opts)
    except ConfigError as e:
        print(f"fastui train: error: {e}", file=sys.stderr)
        return 2
    from fastui.train.run import train

    try:
        out = train(cfg, res, config_path=opts["config"], resume=opts["resume"], dry_run=opts["dry_run"],
                    dry_run_iterations=opts["dry_run_iterations"])
    except ConfigError as e:  # found only once the networks exist (e.g. data shape vs network shape)
        print(f"fastui train: error: {e}", file=sys.stderr)
        return 2
    if opts["dry_run"]:
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_rank() == 0:
            losses = {k: round(v, 6) for k, v in out.items() if k.startswith("loss_")}
            print(f"fastui train: dry run OK ({cfg.loss.method}, {res.divergence or '-'}): {losses}", flush=True)
    return 0


def _refuse_overwrite(cfg, opts) -> None:
    from fastui.train.run import run_dir_of

    run_dir = run_dir_of(cfg, opts["config"])
    if not opts["resume"] and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise ConfigError(f"run directory {str(run_dir)!r} already has checkpoints; pass --resume auto to continue "
                          "it or choose another --run.name")


if __name__ == "__main__":
    sys.exit(main())
