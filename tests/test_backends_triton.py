"""The Triton kernels against the reference on the CPU, in Triton's interpreter (small shapes: it is slow).

TRITON_INTERPRET=1 must be set before the kernels are defined (triton.jit reads it), so this module sets it at import,
before anything imports fastui.kernels. The automatic choice never takes the interpreter, so other test modules are
unaffected; here the backend is chosen explicitly. On a CUDA machine the kernels are tested on the GPU instead
(tests/test_backends.py, triton-cuda).
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "fastui.kernels.score_distill" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastui.backends as B
import fastui.divergences as D
import fastui.functional as FF
from fastui import ops
from fastui.backends.tolerances import assert_parity, parity_errors

try:
    from test_backends import make_inputs, uni_pair
except ImportError:  # pytest's importlib mode: the tests folder is not on sys.path
    sys.path.insert(0, os.path.dirname(__file__))
    from test_backends import make_inputs, uni_pair


@pytest.fixture(autouse=True)
def _triton_interpreter_available():
    x = torch.zeros(2, 4)
    why = B.reasons("triton", x, x, x)
    if torch.cuda.is_available():
        pytest.skip("CUDA present: Triton is tested on the GPU (tests/test_backends.py)")
    if why:
        pytest.skip(f"triton cannot run in the interpreter here: {'; '.join(why)}")


@pytest.mark.parametrize("batch, chw", [(3, (1, 28, 28)), (3, (3, 32, 32)), (2, (3, 64, 64)), (3, (4, 17, 13)),
                                        (1, (1, 28, 28)), (8, (1, 28, 28))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_triton_uni_loss_matches_reference(batch, chw, dtype):
    if dtype != torch.float32 and chw != (3, 32, 32):
        pytest.skip("reduced precision only at one shape: the interpreter is slow")
    x, dt, df, sigma, log_ratio = make_inputs(batch, chw, "cpu")
    ref, fused = uni_pair(sigma, log_ratio, divergence="fkl")
    assert_parity("triton", dtype, parity_errors("triton", dtype, ref, fused, [x, dt, df]), f"{batch}x{chw}")


def test_triton_splits_rows_into_several_chunks_and_still_matches():
    """Force many chunks per row (the GPU path for small batches) in the interpreter."""
    from fastui.kernels import score_distill as K

    x, dt, df, sigma, log_ratio = make_inputs(2, (3, 32, 32), "cpu", seed=11)
    plan = K.plan_chunks
    K.plan_chunks = lambda batch, d, device, block=K.BLOCK: (3, 1024)  # 3 chunks of one block cover d = 3072
    try:
        ref, fused = uni_pair(sigma, log_ratio, divergence="js")
        assert_parity("triton", torch.float32, parity_errors("triton", torch.float32, ref, fused, [x, dt, df]))
    finally:
        K.plan_chunks = plan


@pytest.mark.parametrize("divergence", D.names())
def test_triton_every_divergence_matches_reference(divergence):
    x, dt, df, sigma, log_ratio = make_inputs(3, (1, 28, 28), "cpu", seed=1)
    ref, fused = uni_pair(sigma, log_ratio, divergence=divergence, c_clip=50.0)
    assert_parity("triton", torch.float32, parity_errors("triton", torch.float32, ref, fused, [x, dt, df]))


@pytest.mark.parametrize("method", D.preset_names())
def test_triton_every_preset_matches_reference(method):
    x, dt, df, sigma, log_ratio = make_inputs(3, (4, 17, 13), "cpu", seed=2)

    def ref(a, b, c):
        return FF.preset_loss(method, a, b, c, sigma, log_ratio, reduction="none")

    def fused(a, b, c, backend):
        return ops.preset_loss(method, a, b, c, sigma, log_ratio, reduction="none", backend=backend)

    assert_parity("triton", torch.float32, parity_errors("triton", torch.float32, ref, fused, [x, dt, df]), method)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_fake_score_dsm_matches_reference(dtype):
    x, _, df, sigma, _ = make_inputs(3, (3, 32, 32), "cpu", seed=4)

    def ref(d, xg):
        return FF.fake_score_loss(d, xg, sigma, reduction="none")

    def fused(d, xg, backend):
        return ops.fake_score_loss(d, xg, sigma, reduction="none", backend=backend)

    assert_parity("triton", dtype, parity_errors("triton", dtype, ref, fused, [df, x]), "dsm")


def test_triton_masks_nonfinite_samples_and_takes_strided_inputs():
    x, dt, df, sigma, log_ratio = make_inputs(4, (8, 8, 3), "cpu", seed=6)
    x, dt, df = (t.permute(0, 3, 1, 2) for t in (x, dt, df))
    x[1, 0, 2, 3] = float("nan")
    df[2, 1, 0, 0] = float("-inf")
    ref, fused = uni_pair(sigma, log_ratio, divergence="jeffreys")
    assert_parity("triton", torch.float32, parity_errors("triton", torch.float32, ref, fused, [x, dt, df]))
    loss, stats = ops.score_distill_loss(x, dt, df, sigma, log_ratio, return_stats=True, backend="triton")
    assert stats["valid"].tolist() == [True, False, False, True] and torch.isfinite(loss)
    dsm, dsm_stats = ops.fake_score_loss(df, x, sigma, reduction="none", return_stats=True, backend="triton")
    assert dsm_stats["valid"].tolist() == [True, False, False, True] and dsm[1].item() == 0.0
