"""Every backend against the pure-torch reference: loss and the three gradients, tolerances relative to the
reference's own error in the same dtype (fastui/backends/tolerances.py).

Backends that report reasons (extension not built, no GPU) are skipped with those reasons, so kernels2's cpp/cuda
backends are picked up automatically once they can run. Triton on the CPU interpreter lives in
tests/test_backends_triton.py (it needs TRITON_INTERPRET=1 before the kernels are defined).
"""

import pytest
import torch

import fastui.backends as B
import fastui.divergences as D
import fastui.functional as FF
from fastui import ops
from fastui.backends.tolerances import assert_parity, parity_errors

HAS_CUDA = torch.cuda.is_available()
GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
CASES = [pytest.param("torch", "cpu", id="torch-cpu"), pytest.param("cpp", "cpu", id="cpp-cpu"),
         pytest.param("torch", "cuda", id="torch-cuda", marks=GPU),
         pytest.param("triton", "cuda", id="triton-cuda", marks=GPU),
         pytest.param("cuda", "cuda", id="cuda-cuda", marks=GPU)]
SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64), (4, 17, 13)]


def make_inputs(batch, chw, device, seed=0):
    """Denoiser outputs like a real step's: teacher and fake close to each other, both shrinking x."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *chw, generator=g)
    dt = 0.5 * x + 0.3 * torch.randn(batch, *chw, generator=g)
    df = dt + 0.1 * torch.randn(batch, *chw, generator=g)
    sigma = 0.8 + 1.2 * torch.rand(batch, generator=g)
    log_ratio = 0.5 * torch.randn(batch, generator=g)
    return [t.to(device) for t in (x, dt, df, sigma, log_ratio)]


def require(backend, device):
    x = torch.zeros(2, 4, device=device)
    why = B.reasons(backend, x, x, x)
    if why:
        pytest.skip(f"{backend} cannot run here: {'; '.join(why)}")


def uni_pair(sigma, log_ratio, **kw):
    def ref(x, dt, df):
        return FF.score_distill_loss(x, dt, df, sigma, log_ratio, reduction="none", **kw)

    def fused(x, dt, df, backend):
        return ops.score_distill_loss(x, dt, df, sigma, log_ratio, reduction="none", backend=backend, **kw)

    return ref, fused


def dtypes_for(device):
    return [torch.float32, torch.bfloat16] + ([torch.float16] if device == "cuda" else [])


@pytest.mark.parametrize("backend, device", CASES)
@pytest.mark.parametrize("chw", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_uni_loss_and_gradients_match_reference_for_every_shape_and_dtype(backend, device, chw, batch):
    require(backend, device)
    x, dt, df, sigma, log_ratio = make_inputs(batch, chw, device)
    ref, fused = uni_pair(sigma, log_ratio, divergence="fkl")
    for dtype in dtypes_for(device):
        assert_parity(backend, dtype, parity_errors(backend, dtype, ref, fused, [x, dt, df]), f"{batch}x{chw}")


@pytest.mark.parametrize("backend, device", CASES)
@pytest.mark.parametrize("divergence", D.names())
def test_every_divergence_matches_reference(backend, device, divergence):
    require(backend, device)
    x, dt, df, sigma, log_ratio = make_inputs(3, (3, 32, 32), device, seed=1)
    for weighting in ("sid", "none"):
        ref, fused = uni_pair(sigma, log_ratio, divergence=divergence, weighting=weighting)
        for dtype in dtypes_for(device):
            if dtype == torch.float16 and weighting == "sid":
                continue  # lambda_g = 100 times r^2 / sigma^6 overflows fp16 for pearson: in the reference too
            assert_parity(backend, dtype, parity_errors(backend, dtype, ref, fused, [x, dt, df]),
                          f"{divergence} {weighting}")


@pytest.mark.parametrize("backend, device", CASES)
@pytest.mark.parametrize("method", D.preset_names())
def test_every_preset_matches_reference(backend, device, method):
    require(backend, device)
    x, dt, df, sigma, log_ratio = make_inputs(3, (4, 17, 13), device, seed=2)

    def ref(a, b, c):
        return FF.preset_loss(method, a, b, c, sigma, log_ratio, reduction="none")

    def fused(a, b, c, backend):
        return ops.preset_loss(method, a, b, c, sigma, log_ratio, reduction="none", backend=backend)

    for dtype in dtypes_for(device):
        assert_parity(backend, dtype, parity_errors(backend, dtype, ref, fused, [x, dt, df]), method)


@pytest.mark.parametrize("backend, device", CASES)
def test_c_clip_matches_reference(backend, device):
    require(backend, device)
    x, dt, df, sigma, log_ratio = make_inputs(3, (3, 32, 32), device, seed=3)
    ref, fused = uni_pair(sigma, log_ratio, divergence="pearson", c_clip=5.0)
    assert_parity(backend, torch.float32, parity_errors(backend, torch.float32, ref, fused, [x, dt, df]), "c_clip")


@pytest.mark.parametrize("backend, device", CASES)
@pytest.mark.parametrize("chw", [(1, 28, 28), (3, 64, 64)], ids=lambda s: "x".join(map(str, s)))
def test_fake_score_dsm_matches_reference(backend, device, chw):
    require(backend, device)
    x, _, df, sigma, _ = make_inputs(8, chw, device, seed=4)

    def ref(d, xg):
        return FF.fake_score_loss(d, xg, sigma, reduction="none")

    def fused(d, xg, backend):
        return ops.fake_score_loss(d, xg, sigma, reduction="none", backend=backend)

    for dtype in dtypes_for(device):
        assert_parity(backend, dtype, parity_errors(backend, dtype, ref, fused, [df, x]), "dsm")


@pytest.mark.parametrize("backend, device", CASES)
def test_non_contiguous_inputs_match_reference(backend, device):
    require(backend, device)
    x, dt, df, sigma, log_ratio = make_inputs(3, (32, 32, 3), device, seed=5)
    x, dt, df = (t.permute(0, 3, 1, 2) for t in (x, dt, df))  # channels-last views: not contiguous
    dt = dt[:, :, ::1, :]
    assert not x.is_contiguous()
    ref, fused = uni_pair(sigma, log_ratio, divergence="js")

    def ref_nc(a, b, c):  # parity_errors clones into contiguous leaves: re-permute to keep the views strided
        return ref(*(t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) for t in (a, b, c)))

    def fused_nc(a, b, c, backend):
        return fused(*(t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) for t in (a, b, c)), backend)

    assert_parity(backend, torch.float32, parity_errors(backend, torch.float32, ref_nc, fused_nc, [x, dt, df]),
                  "non-contiguous")


@pytest.mark.parametrize("backend, device", CASES)
def test_nonfinite_samples_are_masked_like_the_reference(backend, device):
    require(backend, device)
    x, dt, df, sigma, log_ratio = make_inputs(5, (3, 8, 8), device, seed=6)
    x[1, 0, 2, 3] = float("nan")
    df[3, 2, 0, 0] = float("inf")
    log_ratio_bad = log_ratio.clone()
    ref, fused = uni_pair(sigma, log_ratio_bad, divergence="jeffreys")
    for dtype in dtypes_for(device):
        assert_parity(backend, dtype, parity_errors(backend, dtype, ref, fused, [x, dt, df]), "nan rows")
    _, stats_ref = FF.score_distill_loss(x, dt, df, sigma, log_ratio, return_stats=True)
    loss, stats = ops.score_distill_loss(x, dt, df, sigma, log_ratio, return_stats=True, backend=backend)
    assert torch.equal(stats["valid"].cpu(), torch.tensor([True, False, True, False, True]))
    assert torch.equal(stats["valid"], stats_ref["valid"]) and int(stats["n_nonfinite"]) == 2
    assert torch.isfinite(loss)


@pytest.mark.parametrize("backend, device", CASES)
def test_nan_sigma_masks_the_dsm_sample(backend, device):
    require(backend, device)
    x, _, df, sigma, _ = make_inputs(4, (1, 8, 8), device, seed=7)
    sigma[2] = float("nan")
    loss, stats = ops.fake_score_loss(df, x, sigma, reduction="none", return_stats=True, backend=backend)
    ref, stats_ref = FF.fake_score_loss(df, x, sigma, reduction="none", return_stats=True)
    assert torch.equal(stats["valid"], stats_ref["valid"]) and not bool(stats["valid"][2])
    assert loss[2].item() == 0.0 and torch.allclose(loss, ref.to(loss.dtype), rtol=1e-5)
