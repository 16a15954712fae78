"""Loading and saving teachers (contract 2).

A fastui checkpoint is a DIRECTORY holding ``arch.json`` (the ``fastui.networks`` architecture dict) and
``weights.pt`` (``torch.save(state_dict)``, read back with ``weights_only=True``: loading never runs code).

``load_teacher(spec)`` accepts:

- a fastui checkpoint directory (or its ``arch.json`` / ``weights.pt``);
- ``"demo"``: the shipped Fashion-MNIST teacher in ``fastui/assets/demo_teacher/``;
- an EDM network-snapshot pickle (``network-snapshot-*.pkl``): read with fastui's restricted unpickler (only
  tensors and constructor arguments are extracted; nothing in the file is executed), see ``fastui.convert``;
- an analytic spec: ``"gmm:ring8"`` (optionally ``"gmm:ring8,radius=2,std=0.1"``) or ``"gaussian:DIM"``
  (optionally ``"gaussian:dim=2,mean=0.5,std=2"``), mapping to ``fastui.analytic``.

The analytic teachers ``GaussianTeacher``, ``GMMTeacher`` and ``ring8`` are re-exported (imported lazily).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

DEMO_TEACHER_DIR = Path(__file__).resolve().parent / "assets" / "demo_teacher"
ARCH_FILE = "arch.json"
WEIGHTS_FILE = "weights.pt"


class TeacherError(ValueError):
    """A teacher spec or file that fastui cannot load (the message says why and what is accepted)."""


def __getattr__(name):  # lazy re-export: fastui.analytic may be written after this module
    if name in ("GaussianTeacher", "GMMTeacher", "ring8"):
        from fastui import analytic

        return getattr(analytic, name)
    raise AttributeError(f"module 'fastui.teachers' has no attribute {name!r}")


def save_checkpoint(module, directory, arch: dict | None = None, state_dict: dict | None = None) -> Path:
    """Write a fastui checkpoint directory atomically (``arch.json`` + ``weights.pt``).

    The files go to a temporary sibling directory that then replaces ``directory``, so a reader never sees a
    half-written checkpoint.

    Args:
        module: a ``fastui.networks`` module (its ``.arch`` and ``state_dict()`` are saved), or None when both
            ``arch`` and ``state_dict`` are given.
        directory: target directory (created; an existing checkpoint there is replaced).
        arch: override of ``module.arch``.
        state_dict: override of ``module.state_dict()`` (e.g. an EMA copy).
    Returns:
        the directory path.
    """
    directory = Path(directory)
    arch = arch if arch is not None else module.arch
    state = state_dict if state_dict is not None else module.state_dict()
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        with open(tmp / ARCH_FILE, "w") as f:
            json.dump(arch, f, indent=2, sort_keys=True)
            f.write("\n")
        torch.save(state, tmp / WEIGHTS_FILE)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def is_checkpoint_dir(path) -> bool:
    """True when ``path`` is a directory holding ``arch.json`` and ``weights.pt``."""
    path = Path(path)
    return path.is_dir() and (path / ARCH_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def load_checkpoint(directory, device="cpu", dtype: torch.dtype | None = None):
    """Load a fastui checkpoint directory into a ``fastui.networks`` module (eval mode, strict load).

    Args:
        directory: checkpoint directory (or a path to its arch.json / weights.pt).
        device: target device.
        dtype: optional parameter dtype (e.g. torch.bfloat16).
    Returns:
        the network in eval mode with ``requires_grad`` unchanged (True).
    """
    from fastui import networks

    directory = Path(directory)
    if directory.name in (ARCH_FILE, WEIGHTS_FILE):
        directory = directory.parent
    if not is_checkpoint_dir(directory):
        raise TeacherError(f"{directory} is not a fastui checkpoint (a directory with {ARCH_FILE} and {WEIGHTS_FILE})")
    try:
        arch = json.loads((directory / ARCH_FILE).read_text())
    except json.JSONDecodeError as err:
        raise TeacherError(f"{directory / ARCH_FILE} is not valid JSON: {err}") from err
    try:
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or non-weights files
        raise TeacherError(f"{directory / WEIGHTS_FILE} is not a weights-only state dict: {err}") from err
    # Build without allocating random weights (296M-parameter ADM in a second), then adopt the loaded tensors.
    with torch.device("meta"):
        net = networks.build(arch)
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise TeacherError(f"{directory}: weights do not match arch.json: {err}") from err
    if any(t.is_meta for t in [*net.parameters(), *net.buffers()]):  # non-persistent buffers: build for real
        net = networks.build(arch)
        net.load_state_dict(state, strict=True)
    net = net.to(device=device, dtype=dtype) if dtype is not None else net.to(device)
    return net.eval()


def _parse_kv(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise TeacherError(f"expected key=value in analytic spec, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = float(v)
    return out


def _analytic(spec: str):
    from fastui import analytic

    kind, _, rest = spec.partition(":")
    if kind == "gmm":
        name, _, params = rest.partition(",")
        if name != "ring8":
            raise TeacherError(f"unknown GMM preset {name!r}; valid: ring8")
        return analytic.ring8(**_parse_kv(params))
    if kind == "gaussian":
        if rest.isdigit():
            kw = {"dim": float(rest)}
        else:
            kw = _parse_kv(rest)
        dim = int(kw.pop("dim", 2))
        mean = kw.pop("mean", 0.0)
        std = kw.pop("std", 1.0)
        if kw:
            raise TeacherError(f"unknown gaussian parameters {sorted(kw)}; valid: dim, mean, std")
        return analytic.GaussianTeacher(torch.full((dim,), mean, dtype=torch.float64),
                                        torch.eye(dim, dtype=torch.float64) * std**2)
    raise TeacherError(f"unknown analytic teacher {spec!r}")


def load_teacher(spec, device="cpu", dtype: torch.dtype | None = None):
    """Load a teacher denoiser from a spec (see the module docstring).

    Args:
        spec: checkpoint directory, "demo", EDM snapshot .pkl path, or analytic spec ("gmm:ring8", "gaussian:2").
        device: target device.
        dtype: optional parameter dtype for network teachers.
    Returns:
        an nn.Module with ``forward(x, sigma, class_labels=None)`` -> denoised x, in eval mode.
    Raises:
        TeacherError with the accepted forms when the spec matches none of them.
    """
    spec_str = str(spec)
    if spec_str == "demo":
        if not is_checkpoint_dir(DEMO_TEACHER_DIR):
            raise TeacherError(f"the demo teacher is not shipped in this installation ({DEMO_TEACHER_DIR} lacks "
                               f"{ARCH_FILE}/{WEIGHTS_FILE}); train one with `fastui teacher` or pass a directory")
        return load_checkpoint(DEMO_TEACHER_DIR, device, dtype)
    if spec_str.startswith(("gmm:", "gaussian:")):
        return _analytic(spec_str).to(device)
    path = Path(spec_str)
    if path.is_dir() or path.name in (ARCH_FILE, WEIGHTS_FILE):
        return load_checkpoint(path, device, dtype)
    if path.is_file():
        from fastui.convert import load_edm_snapshot

        net = load_edm_snapshot(path)
        net = net.to(device=device, dtype=dtype) if dtype is not None else net.to(device)
        return net.eval()
    raise TeacherError(f"cannot load teacher {spec_str!r}: expected a fastui checkpoint directory (arch.json + "
                       f"weights.pt), 'demo', an EDM network-snapshot .pkl, 'gmm:ring8' or 'gaussian:DIM'")


__all__ = [
    "DEMO_TEACHER_DIR",
    "GMMTeacher",  # noqa: F822 - provided lazily by __getattr__
    "GaussianTeacher",  # noqa: F822 - provided lazily by __getattr__
    "TeacherError",
    "is_checkpoint_dir",
    "load_checkpoint",
    "load_teacher",
    "ring8",  # noqa: F822 - provided lazily by __getattr__
    "save_checkpoint",
]
