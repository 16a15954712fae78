"""The Triton backend: fused kernels of ``fastui.kernels.score_distill`` on a CUDA device.

On the CPU the kernels run only in Triton's interpreter (``TRITON_INTERPRET=1`` set before the kernels are first
imported); that is for tests, so the automatic choice never takes it (:func:`auto_reasons`), while an explicit
``FASTUI_BACKEND=triton`` does.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

NAME = "triton"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_KERNELS_MODULE = "fastui.kernels.score_distill"


@functools.cache
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install raising anything else
        return f"triton not importable: {type(exc).__name__}: {exc}"
    return None


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reasons(x_g: torch.Tensor, d_teacher: torch.Tensor, d_fake: torch.Tensor) -> list[str]:
    """Why these inputs can't run here ([] = they can).

    Reasons: triton missing, CPU tensors without the interpreter (or kernels already compiled for the GPU),
    a CUDA tensor while the kernels were defined for the interpreter, an unsupported dtype.
    """
    reasons = []
    err = _triton_import_error()
    if err:
        reasons.append(err)
    device = x_g.device
    loaded = sys.modules.get(_KERNELS_MODULE)
    if device.type == "cpu":
        if not _interpret():
            reasons.append("tensors on the CPU and TRITON_INTERPRET!=1 (the interpreter runs Triton on the CPU)")
        elif loaded is not None and not getattr(loaded, "INTERPRETED", False):
            reasons.append("Triton kernels were already defined for the GPU (TRITON_INTERPRET=1 set too late)")
    elif device.type == "cuda":
        if loaded is not None and getattr(loaded, "INTERPRETED", False):
            reasons.append("Triton kernels were defined for the interpreter (TRITON_INTERPRET=1); unset it for CUDA")
    else:
        reasons.append(f"device type {device.type!r} unsupported (cuda, or cpu under TRITON_INTERPRET=1)")
    dtypes = {t.dtype for t in (x_g, d_teacher, d_fake)}
    bad = sorted(str(dt).replace("torch.", "") for dt in dtypes if dt not in DTYPES)
    if bad:
        reasons.append(f"dtype {', '.join(bad)} unsupported (fp32, bf16, fp16)")
    return reasons


def auto_reasons(x_g: torch.Tensor, d_teacher: torch.Tensor, d_fake: torch.Tensor) -> list[str]:
    """Extra reasons that apply only to the automatic choice: the interpreter is for tests, never fast."""
    if x_g.device.type == "cpu" and _interpret():
        return ["the Triton interpreter on the CPU is a test device; choose it explicitly (FASTUI_BACKEND=triton)"]
    return []


def _kernels():
    from fastui.kernels import score_distill  # lazy: TRITON_INTERPRET must be read when the kernels are defined

    return score_distill


def core_forward(x, dt, df, k, normalize: bool, c_clip: float, need_grads: bool):
    """Fused core (contract 1): see :func:`fastui.kernels.score_distill.score_distill_fwd`."""
    return _kernels().score_distill_fwd(x, dt, df, k, normalize, c_clip, need_grads)


def dsm_forward(d_fake, x_g, lam, need_grads: bool):
    """Fused fake-score DSM (contract 1): see :func:`fastui.kernels.score_distill.dsm_fwd`."""
    return _kernels().dsm_fwd(d_fake, x_g, lam, need_grads)
