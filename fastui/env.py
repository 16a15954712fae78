"""``fastui env``: versions, devices and the backend table with the reasons each backend cannot run.

Example:
    $ fastui env
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

from . import backends


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except Exception as exc:  # noqa: BLE001 - optional packages: report why, never fail
        return f"not importable ({type(exc).__name__}: {exc})"
    return getattr(mod, "__version__", "unknown")


def report() -> str:
    """The text ``fastui env`` prints."""
    import fastui

    lines = [
        f"fastui    {fastui.__version__} ({os.path.dirname(fastui.__file__)})",
        f"python    {platform.python_version()} ({sys.executable})",
        f"platform  {platform.platform()}",
        f"torch     {torch.__version__} (CUDA build {torch.version.cuda or 'none'})",
        f"triton    {_version('triton')}",
        f"deepspeed {_version('deepspeed')}",
        f"threads   {torch.get_num_threads()}",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i}    {p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}, "
                         f"{p.multi_processor_count} SMs")
    else:
        lines.append("cuda      no CUDA device")
    env = os.environ.get(backends.ENV_VAR, "")
    lines.append(f"{backends.ENV_VAR}={env or '(unset: automatic, priority ' + ' -> '.join(backends.PRIORITY) + ')'}")
    lines.append("")
    lines.append(f"{'device':<7}{'dtype':<10}{'backend':<8}{'auto':<6}status")
    for row in backends.table():
        status = "ok" if not row["reasons"] else "; ".join(row["reasons"])
        lines.append(f"{row['device']:<7}{row['dtype']:<10}{row['backend']:<8}{'*' if row['auto'] else '':<6}{status}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the environment report. Returns the exit code (0)."""
    parser = argparse.ArgumentParser(prog="fastui env", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
