"""Backend registry and dispatch (DESIGN.md "Backend dispatch").

Each backend module (``torch``, ``triton``, ``cpp``, ``cuda``) follows contract 1 of the team brief: ``NAME``,
``unavailable_reasons(x_g, d_teacher, d_fake) -> list[str]``, ``core_forward(...)`` and ``dsm_forward(...)``. A module
may also define ``auto_reasons(...)``: reasons that keep it out of the automatic choice only (Triton's CPU interpreter).

Priority ``cuda -> triton -> cpp -> torch``; ``FASTUI_BACKEND=torch|cpp|triton|cuda`` overrides it. The automatic choice
takes the first backend with no reasons and logs the skipped ones once; an explicit choice that cannot run raises
:class:`BackendUnavailable` with its reasons. The torch reference always works.

Example:
    >>> import torch, fastui.backends as B
    >>> x = _torch.zeros(2, 3)
    >>> B.select(x, x, x).NAME in B.PRIORITY
    True
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

import torch as _torch  # aliased: the submodule fastui.backends.torch rebinds the name `torch` here

__all__ = ["ENV_VAR", "PRIORITY", "BackendUnavailable", "get", "reasons", "select", "table"]

PRIORITY = ("cuda", "triton", "cpp", "torch")
ENV_VAR = "FASTUI_BACKEND"
log = logging.getLogger("fastui.backends")

_modules: dict[str, ModuleType | str] = {}  # name -> module, or the import error as a reason
_logged: set = set()


class BackendUnavailable(RuntimeError):
    """An explicitly chosen backend cannot run the given inputs; the message lists the reasons."""


def _load(name: str) -> ModuleType | str:
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"{__name__}.{name}")
        except Exception as exc:  # noqa: BLE001 - a backend module that fails to import is just one more reason
            _modules[name] = f"fastui.backends.{name} not importable: {type(exc).__name__}: {exc}"
    return _modules[name]


def _check_name(name: str) -> str:
    key = name.strip().lower()
    if key not in PRIORITY:
        raise ValueError(f"unknown backend {name!r} ({ENV_VAR} or backend=); choose one of: {', '.join(PRIORITY)}")
    return key


def get(name: str) -> ModuleType:
    """The backend module ``name`` (raises :class:`BackendUnavailable` if it cannot be imported)."""
    mod = _load(_check_name(name))
    if isinstance(mod, str):
        raise BackendUnavailable(mod)
    return mod


def reasons(name: str, x_g: _torch.Tensor, d_teacher: _torch.Tensor, d_fake: _torch.Tensor, *,
            automatic: bool = False) -> list[str]:
    """Why backend ``name`` cannot run these inputs ([] = it can); ``automatic`` adds the auto-only reasons."""
    mod = _load(_check_name(name))
    if isinstance(mod, str):
        return [mod]
    try:
        out = list(mod.unavailable_reasons(x_g, d_teacher, d_fake))
        if automatic and hasattr(mod, "auto_reasons"):
            out += list(mod.auto_reasons(x_g, d_teacher, d_fake))
    except Exception as exc:  # noqa: BLE001 - a backend whose self-check breaks must not break dispatch
        out = [f"unavailable_reasons raised {type(exc).__name__}: {exc}"]
    return out


def requested() -> str | None:
    """The backend named by ``FASTUI_BACKEND`` (validated), or ``None`` for the automatic choice."""
    value = os.environ.get(ENV_VAR, "").strip()
    return _check_name(value) if value else None


def select(x_g: _torch.Tensor, d_teacher: _torch.Tensor, d_fake: _torch.Tensor, name: str | None = None) -> ModuleType:
    """The backend module that will run these inputs.

    Args:
        name: explicit backend; ``None`` reads ``FASTUI_BACKEND``, and if that is unset chooses automatically.

    Raises:
        BackendUnavailable: an explicit backend cannot run the inputs (the message lists its reasons).
        ValueError: an unknown backend name.
    """
    name = name or requested()
    if name is not None:
        why = reasons(name, x_g, d_teacher, d_fake)
        if why:
            raise BackendUnavailable(f"fastui backend {name!r} (explicitly requested) cannot run "
                                     f"{_describe(x_g, d_teacher, d_fake)}: " + "; ".join(why))
        return get(name)
    skipped = []
    for cand in PRIORITY:
        why = reasons(cand, x_g, d_teacher, d_fake, automatic=True)
        if not why:
            _log_once(cand, skipped, x_g, d_teacher, d_fake)
            return get(cand)
        skipped.append((cand, why))
    raise BackendUnavailable("no fastui backend can run these inputs: " + _format(skipped))  # torch never refuses


def _describe(*tensors: _torch.Tensor) -> str:
    dtypes = "/".join(sorted({str(t.dtype).replace("torch.", "") for t in tensors}))
    return f"{dtypes} tensors on {tensors[0].device.type}"


def _format(skipped) -> str:
    return "; ".join(f"{n}: {', '.join(w)}" for n, w in skipped)


def _log_once(chosen: str, skipped, x_g, d_teacher, d_fake) -> None:
    key = (chosen, x_g.device.type, x_g.dtype, d_teacher.dtype, d_fake.dtype)
    if not skipped or key in _logged:
        return
    _logged.add(key)
    level = logging.WARNING if chosen == "torch" else logging.INFO  # the slow reference deserves attention
    log.log(level, "fastui: backend %s for %s (skipped %s)", chosen, _describe(x_g, d_teacher, d_fake),
            _format(skipped))


def table(devices: list[str] | None = None,
          dtypes=(_torch.float32, _torch.bfloat16, _torch.float16, _torch.float64)) -> list[dict]:
    """One row per (device, dtype, backend): ``{"device", "dtype", "backend", "reasons", "auto"}``.

    ``auto`` marks the backend the automatic choice takes for that device and dtype. Used by ``fastui env``.
    """
    if devices is None:
        devices = ["cpu"] + (["cuda"] if _torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        for dt in dtypes:
            x = _torch.zeros(2, 8, dtype=dt, device=dev)
            chosen = None
            for name in PRIORITY:
                why = reasons(name, x, x, x, automatic=True)
                if chosen is None and not why:
                    chosen = name
                rows.append({"device": dev, "dtype": str(dt).replace("torch.", ""), "backend": name,
                             "reasons": why, "auto": chosen == name})
    return rows
