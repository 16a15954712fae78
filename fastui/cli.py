"""The ``fastui`` command: one entry point, one module per subcommand.

Each subcommand module defines ``main(argv: list[str] | None = None) -> int``; this file only dispatches, so a
missing optional dependency of one subcommand never breaks the others.

Subcommands: train, teacher, sample, convert-edm, shards, eval, env, toy, demo.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "train": ("fastui.train.__main__", "distil a teacher into a one-step generator (DeepSpeed, torchrun or plain)"),
    "teacher": ("fastui.teacher_train", "train an EDM teacher (the demo teacher is made with it)"),
    "sample": ("fastui.sample", "Heun sampling of teachers, one-step sampling of generators: PNG grids and .npz"),
    "convert-edm": ("fastui.convert", "convert an EDM network-snapshot pickle into a fastui checkpoint"),
    "shards": ("fastui.data.cli", "write webdataset shards from folders, zips, arrays, Fashion-MNIST, MNIST"),
    "eval": ("fastui.eval.cli", "FID with the standard Inception network; reference statistics"),
    "env": ("fastui.env", "print the environment and the kernel backend table"),
    "toy": ("fastui.toy", "2-D toy distillation of an 8-Gaussian ring (CPU, seconds)"),
    "demo": ("fastui.demo", "the one-command demo: distil the shipped Fashion-MNIST teacher on the CPU"),
}


def _usage() -> str:
    lines = ["usage: fastui <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {doc}" for name, (_, doc) in SUBCOMMANDS.items()]
    lines += ["", "fastui <command> --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``fastui <command> ...`` to the command's module."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"fastui: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
