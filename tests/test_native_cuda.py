"""fastui._C_cuda through fastui.backends.cuda: builds and imports without a GPU, explains itself, and (GPU tests)
matches the fp64 autograd reference in fp32/bf16/fp16 with tolerances relative to the reference's own error."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from test_native_cpp import assert_close_to_reference, random_core, reference_core, reference_dsm

import fastui.functional as FF

cuda = pytest.importorskip("fastui.backends.cuda")

HAS_GPU = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _nvcc_present() -> bool:
    return bool(os.environ.get("NVCC") or shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc"))


def test_cuda_module_is_built_where_nvcc_is_and_imports_without_a_gpu():
    """setup.py's auto mode builds fastui._C_cuda when nvcc is found; importing it needs no driver (static cudart)."""
    if os.environ.get("FASTUI_BUILD_CUDA", "auto") == "0" or not _nvcc_present():
        pytest.skip("CUDA build switched off or no nvcc")
    assert cuda.module_error() is None
    from fastui import _C_cuda

    assert _C_cuda.ABI_VERSION == 1
    count, error = _C_cuda.device_count()  # never raises, with or without a driver
    assert isinstance(count, int) and isinstance(error, str)
    assert (count > 0) == HAS_GPU or error


@pytest.mark.skipif(HAS_GPU, reason="checks the reasons given on a machine without a GPU")
def test_cuda_backend_says_no_device_without_a_gpu():
    x = torch.zeros(2, 8)
    reasons = cuda.unavailable_reasons(x, x, x)
    assert "tensors not on a CUDA device" in reasons
    if cuda.module_error() is None:
        assert any(r.startswith("no CUDA device") for r in reasons), reasons
    else:
        assert any("fastui._C_cuda not built" in r for r in reasons), reasons


def test_cuda_backend_rejects_float64():
    x = torch.zeros(2, 8, dtype=torch.float64)
    assert any("float64 unsupported" in r for r in cuda.unavailable_reasons(x, x, x))


def _check_core_gpu(x, dt, df, k, normalize, c_clip, dtype, *, offset=0):
    """Run the CUDA backend (optionally on rows that start ``offset`` elements into a buffer: not 16-byte aligned)."""
    dev = torch.device("cuda")
    xs = []
    for t in (x, dt, df):
        buf = torch.empty(t.numel() + offset, dtype=dtype, device=dev)
        view = buf[offset:].view(t.shape)
        view.copy_(t.to(dtype))
        xs.append(view)
    out = cuda.core_forward(*xs, k.float().to(dev), normalize, c_clip, True)
    assert not cuda.unavailable_reasons(*xs)
    out = [o.cpu() for o in out]
    xd, dtd, dfd = (t.to(dtype) for t in (x, dt, df))
    ref64 = reference_core(xd, dtd, dfd, k.double(), normalize, c_clip, torch.float64)
    ref_same = reference_core(xd, dtd, dfd, k.float(), normalize, c_clip, dtype)
    assert torch.equal(out[1], ref_same[1])
    assert all(g.dtype == dtype for g in out[2:])
    assert_close_to_reference([out[0], *out[2:]], [ref64[0], *ref64[2:]], [ref_same[0], *ref_same[2:]], dtype,
                              ["loss", "gx", "gdt", "gdf"])
    return out


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("shape", [(8, 3 * 64 * 64), (1, 4 * 17 * 13), (64, 3 * 32 * 32), (3, 5)])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_cuda_core_matches_reference(dtype, shape, offset):
    _check_core_gpu(*random_core(*shape, seed=11), True, float("inf"), dtype, offset=offset)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
def test_cuda_core_plain_clipped_and_nonfinite_rows(dtype):
    x, dt, df, k = random_core(5, 3 * 16 * 16, seed=12)
    k[3:] *= 1e3
    dt[1, 3] = float("nan")
    k[0, 2] = float("inf")
    out = _check_core_gpu(x, dt, df, k, False, 0.5, dtype)
    assert out[1].tolist() == [True, False, False, True, True]
    for g in out[2:]:
        assert torch.equal(g[1:3], torch.zeros_like(g[1:3]))


@gpu
@needs_gpu
def test_cuda_core_runs_on_the_current_stream_and_large_batches():
    """More rows than one grid dimension holds (65535) are launched in slices; a side stream orders correctly."""
    x, dt, df, k = random_core(70000, 8, seed=13)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xs, dts, dfs, ks = (t.cuda(non_blocking=False) for t in (x, dt, df, k))
        out = cuda.core_forward(xs, dts, dfs, ks, True, float("inf"), True)
    stream.synchronize()
    ref = reference_core(x, dt, df, k.double(), True, float("inf"), torch.float64)
    torch.testing.assert_close(out[0].cpu().double(), ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[2].cpu().double(), ref[2], rtol=1e-4, atol=1e-4)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
def test_cuda_dsm_matches_fake_score_loss(dtype):
    g = torch.Generator().manual_seed(14)
    x = torch.randn(4, 3 * 32 * 32 + 3, generator=g)
    df = x + 0.2 * torch.randn(x.shape, generator=g)
    df[2, 5] = float("inf")
    sigma = torch.tensor([0.3, 2.0, 1.0, float("nan")])
    lam = FF.edm_loss_weight(sigma).float()
    xd, dfd = x.to(dtype), df.to(dtype)
    loss, valid, grad = (o.cpu() for o in cuda.dsm_forward(dfd.cuda(), xd.cuda(), lam.cuda(), True))
    ref64 = reference_dsm(dfd, xd, sigma.double(), torch.float64)
    ref_same = reference_dsm(dfd, xd, sigma, dtype)
    assert valid.tolist() == [True, True, False, False]
    assert torch.equal(grad[2:], torch.zeros_like(grad[2:]))
    assert_close_to_reference([loss, grad], [ref64[0], ref64[2]], [ref_same[0], ref_same[2]], dtype, ["loss", "g"])


@gpu
@needs_gpu
def test_cuda_and_cpp_backends_agree_bit_for_bit_on_half_stores():
    """Same formulas, same fp32 sums order aside: gradients of both native backends round identically in most
    entries; checks the CUDA bf16/fp16 store paths against the CPU's exhaustive-tested ones."""
    cpp = pytest.importorskip("fastui.backends.cpp")
    if cpp.module_error() is not None:
        pytest.skip("fastui._C not built")
    g = torch.Generator().manual_seed(15)
    x = torch.randn(2, 4096, generator=g)
    for dtype in (torch.bfloat16, torch.float16):
        df = (x + torch.randn(x.shape, generator=g)).to(dtype)
        xd = x.to(dtype)
        lam = torch.tensor([0.7, 1.3])
        a = cpp.dsm_forward(df, xd, lam, True)[2]
        b = cuda.dsm_forward(df.cuda(), xd.cuda(), lam.cuda(), True)[2].cpu()
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))


def test_arch_check_follows_cuda_binary_compatibility():
    """sm_80 code runs on 8.6/8.9, not on 7.5; the PTX of the last arch covers newer GPUs; 90a only 9.0."""
    assert cuda.arch_supported((8, 0), "80;90") and cuda.arch_supported((8, 6), "80;90")
    assert cuda.arch_supported((9, 0), "80;90") and cuda.arch_supported((10, 0), "80;90")
    assert not cuda.arch_supported((7, 5), "80;90")
    assert not cuda.arch_supported((8, 0), "90")
    assert cuda.arch_supported((9, 0), "90a") and not cuda.arch_supported((10, 0), "90a")
