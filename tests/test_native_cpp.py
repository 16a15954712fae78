"""fastui._C (C++/OpenMP) through fastui.backends.cpp against the fp64 autograd reference (functional.py).

Native specifics: B = 1, odd sizes, both code paths (whole rows / rows split into chunks), thread counts, non-finite
rows, c_clip, normalisation, large d, bf16/fp16 conversions bit for bit. Tolerances are relative to the reference's
own error in the same dtype (STYLE.md 4): ``err(native) <= TOL_FACTOR * err(reference in that dtype) + floor``.
"""

from __future__ import annotations

import os

import pytest
import torch

import fastui.functional as FF

cpp = pytest.importorskip("fastui.backends.cpp")

# one table of tolerances for this backend: factor on the reference's own error, and a floor relative to the scale
TOL_FACTOR = {torch.float32: 4.0, torch.bfloat16: 2.0, torch.float16: 2.0}
TOL_FLOOR = {torch.float32: 2e-6, torch.bfloat16: 2e-6, torch.float16: 2e-6}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

needs_module = pytest.mark.skipif(cpp.module_error() is not None, reason=f"fastui._C not built: {cpp.module_error()}")


def reference_core(x, dt, df, k, normalize, c_clip, dtype):
    """Loss, valid and the three gradients of functional.score_distill_core_reference (autograd) in ``dtype``."""
    xs, dts, dfs = (t.detach().to(dtype).requires_grad_() for t in (x, dt, df))
    loss, valid = FF.score_distill_core_reference(xs, dts, dfs, FF.Coefficients(k.to(FF.accumulation_dtype(xs)),
                                                                                normalize, c_clip))
    loss.sum().backward()
    return loss.detach(), valid, xs.grad, dts.grad, dfs.grad


def reference_dsm(df, x, sigma, dtype):
    """Per-sample DSM loss, valid and d loss / d d_fake of functional.fake_score_loss in ``dtype``."""
    dfs = df.detach().to(dtype).requires_grad_()
    loss, stats = FF.fake_score_loss(dfs, x.to(dtype), sigma.to(FF.accumulation_dtype(dfs)), reduction="none",
                                     return_stats=True)
    loss.sum().backward()
    return loss.detach(), stats["valid"], dfs.grad


def assert_close_to_reference(out, ref64, ref_same, dtype, names):
    """Each output within TOL_FACTOR x the reference's own error (in ``dtype``) of the fp64 reference."""
    for name, o, r64, rd in zip(names, out, ref64, ref_same):
        o64, r64 = o.double(), r64.double()
        assert o.shape == r64.shape, name
        finite = torch.isfinite(r64)
        assert torch.equal(torch.isfinite(o64), finite), f"{name}: non-finite pattern differs"
        err = (o64 - r64)[finite].abs().max().item() if finite.any() else 0.0
        own = (rd.double() - r64)[finite].abs().max().item() if finite.any() else 0.0
        scale = r64[finite].abs().max().item() if finite.any() else 0.0
        bound = TOL_FACTOR[dtype] * own + TOL_FLOOR[dtype] * scale
        assert err <= bound, f"{name} ({dtype}): error {err:.3e} > {bound:.3e} (reference's own {own:.3e})"


def random_core(batch, d, seed=0, *, k_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x, dt, df = (torch.randn(batch, d, generator=g) for _ in range(3))
    dt = x + 0.3 * dt  # denoisers near x_g, like in training (keeps S, F, P of comparable size)
    df = x + 0.3 * df
    k = torch.randn(5, batch, generator=g) * k_scale
    return x, dt, df, k


def run_core(x, dt, df, k, normalize, c_clip, dtype, need_grads=True):
    x, dt, df = (t.to(dtype).contiguous() for t in (x, dt, df))
    return cpp.core_forward(x, dt, df, k.float().contiguous(), normalize, c_clip, need_grads)


def check_core(x, dt, df, k, normalize, c_clip, dtype, outputs=None):
    xd, dtd, dfd = (t.to(dtype) for t in (x, dt, df))  # the inputs as the backend sees them
    out = outputs if outputs is not None else run_core(xd, dtd, dfd, k, normalize, c_clip, dtype)
    ref64 = reference_core(xd, dtd, dfd, k.double(), normalize, c_clip, torch.float64)
    ref_same = reference_core(xd, dtd, dfd, k.float(), normalize, c_clip, dtype)
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.bool
    assert all(g.dtype == dtype for g in out[2:])
    assert torch.equal(out[1], ref_same[1]), "valid mask differs from the reference (fp32 sums)"
    assert_close_to_reference([out[0], *out[2:]], [ref64[0], *ref64[2:]], [ref_same[0], *ref_same[2:]], dtype,
                              ["loss", "gx", "gdt", "gdf"])
    return out


@needs_module
def test_cpu_module_imports_and_reports_openmp():
    from fastui import _C

    assert _C.ABI_VERSION == 1
    assert isinstance(_C.OPENMP, bool)
    assert cpp.unavailable_reasons(*(torch.zeros(2, 3),) * 3) == []


def test_cpu_module_is_built_where_a_compiler_is():
    """setup.py's auto mode builds fastui._C when g++ works; a silently failed build would only show up here."""
    import shutil

    if os.environ.get("FASTUI_BUILD_CPU", "auto") == "0" or shutil.which("g++") is None:
        pytest.skip("CPU build switched off or no g++")
    assert cpp.module_error() is None


@needs_module
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "plain"])
def test_core_matches_reference_batch_one_odd_size(dtype, normalize):
    check_core(*random_core(1, 4 * 17 * 13, seed=1), normalize, float("inf"), dtype)


@needs_module
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
def test_core_matches_reference_small_batch_of_images(dtype):
    check_core(*random_core(3, 3 * 16 * 16 + 5, seed=2), True, float("inf"), dtype)


@needs_module
def test_core_excludes_nonfinite_rows_with_zero_loss_and_gradients():
    x, dt, df, k = random_core(6, 257, seed=3)
    dt[1, 7] = float("nan")
    x[2, 0] = float("inf")
    k[3, 3] = float("nan")
    df[4, 100] = -float("inf")
    out = check_core(x, dt, df, k, True, float("inf"), torch.float32)
    assert out[1].tolist() == [True, False, False, False, False, True]
    bad = ~out[1]
    assert torch.equal(out[0][bad], torch.zeros(4))
    for g in out[2:]:
        assert torch.equal(g[bad], torch.zeros_like(g[bad]))  # exact zeros, not NaN * 0
        assert torch.isfinite(g).all()


@needs_module
def test_core_excludes_rows_whose_sums_overflow_in_fp32():
    x, dt, df, k = random_core(2, 64, seed=4)
    dt[0] = 3e38  # every entry finite, the fp32 sums are not
    out = run_core(x, dt, df, k, False, float("inf"), torch.float32)
    ref = reference_core(x, dt, df, k, False, float("inf"), torch.float32)
    assert out[1].tolist() == [False, True] == ref[1].tolist()
    assert out[0][0] == 0 and all(torch.equal(g[0], torch.zeros_like(g[0])) for g in out[2:])
    check_core(x[1:], dt[1:], df[1:], k[:, 1:], False, float("inf"), torch.float32)


@needs_module
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_core_clips_c_like_the_reference(dtype):
    x, dt, df, k = random_core(4, 300, seed=5)
    k[3:] *= 1e3  # |c| far above the clip
    clipped = check_core(x, dt, df, k, True, 0.5, dtype)
    unclipped = run_core(x, dt, df, k, True, float("inf"), dtype)
    assert not torch.allclose(clipped[2].float(), unclipped[2].float())  # the clip is active in this case


@needs_module
def test_core_without_gradients_returns_the_same_loss():
    x, dt, df, k = random_core(3, 1000, seed=6)
    with_g = run_core(x, dt, df, k, True, 2.0, torch.float32)
    without = run_core(x, dt, df, k, True, 2.0, torch.float32, need_grads=False)
    assert without[2:] == (None, None, None)
    assert torch.equal(with_g[0], without[0]) and torch.equal(with_g[1], without[1])


@needs_module
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_core_large_rows_split_into_chunks_match_reference(threads, batch):
    """Large d: rows are cut into chunks (partial sums combined per sample) whenever threads > 1 and B is uneven."""
    from fastui import _C

    x, dt, df, k = random_core(batch, 3 * 64 * 64 + 24, seed=7)
    loss = torch.empty(batch)
    valid = torch.empty(batch, dtype=torch.bool)
    grads = [torch.empty_like(x) for _ in range(3)]
    _C.core_forward(x.data_ptr(), dt.data_ptr(), df.data_ptr(), k.data_ptr(), batch, x.shape[1], 0, True, 1e30,
                    loss.data_ptr(), valid.data_ptr(), *[g.data_ptr() for g in grads], threads)
    check_core(x, dt, df, k, True, 1e30, torch.float32, outputs=(loss, valid, *grads))


@needs_module
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
def test_dsm_matches_fake_score_loss(dtype):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 3 * 8 * 8 + 3, generator=g)
    df = x + 0.2 * torch.randn(x.shape, generator=g)
    df[2, 5] = float("nan")
    sigma = torch.tensor([0.3, 2.0, 1.0, float("nan")])
    lam = FF.edm_loss_weight(sigma).float()
    xd, dfd = x.to(dtype), df.to(dtype)
    loss, valid, grad = cpp.dsm_forward(dfd, xd, lam, True)
    ref64 = reference_dsm(dfd, xd, sigma.double(), torch.float64)
    ref_same = reference_dsm(dfd, xd, sigma, dtype)
    assert valid.tolist() == [True, True, False, False] == ref64[1].tolist()
    assert grad.dtype == dtype and torch.equal(grad[2:], torch.zeros_like(grad[2:]))
    assert_close_to_reference([loss, grad], [ref64[0], ref64[2]], [ref_same[0], ref_same[2]], dtype, ["loss", "g"])
    assert cpp.dsm_forward(dfd, xd, lam, False)[2] is None


@needs_module
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_conversions_are_exact_for_every_bit_pattern(dtype):
    """Loads: every 16-bit pattern as d_fake (x = 0, lam = 0.5): the DSM gradient 2 lam d_fake must return the input
    bits (inf stays inf; NaN rows are excluded) and the loss must equal lam * value^2 computed by torch."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    vals = bits.view(dtype).reshape(-1, 1).contiguous()
    zeros = torch.zeros_like(vals)
    lam = torch.full((vals.shape[0],), 0.5)
    loss, valid, grad = cpp.dsm_forward(vals, zeros, lam, True)
    finite = torch.isfinite(vals.float()).reshape(-1)
    assert torch.equal(valid, finite)
    assert torch.equal(grad[finite].view(torch.int16), vals[finite].view(torch.int16))
    v = vals.float().reshape(-1)[finite]
    assert torch.equal(loss[finite], 0.5 * (v * v))  # the kernel's order: lam * sum(diff^2)


@needs_module
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_stores_round_to_nearest_even_like_torch(dtype):
    """Stores: fp32 gradients of every magnitude (subnormal to overflow) rounded exactly as torch's .to(dtype)."""
    g = torch.Generator().manual_seed(9)
    low, high = (-40, 40) if dtype == torch.bfloat16 else (-30, 15)  # within the format's range (no overflow)
    exps = torch.randint(low, high, (4096,), generator=g).float()
    target = torch.randn(4096, generator=g) * torch.pow(2.0, exps)  # values 2 lam (df - x) should take
    lam = torch.full((1,), 0.5)
    df = target.reshape(1, -1)
    # d_fake - x_g = hi + lo is exact in fp32 and holds more bits than one 16-bit value: the store has to round
    hi = df.to(dtype)
    lo = (df - hi.float()).to(dtype)
    _, valid, grad = cpp.dsm_forward(hi, (-lo), lam, True)
    expect = (hi.float() + lo.float()).to(dtype)  # 2 * 0.5 * (hi - (-lo)) in fp32, then rounded by torch
    assert valid.item()
    same = grad.view(torch.int16) == expect.view(torch.int16)
    assert same.all(), f"{(~same).sum().item()} of {same.numel()} roundings differ"


def test_cpp_backend_reports_why_it_cannot_run():
    x = torch.zeros(2, 3)
    reasons = cpp.unavailable_reasons(x.double(), x.double(), x.double())
    assert any("float64 unsupported" in r for r in reasons)
    if cpp.module_error() is not None:
        assert any("fastui._C not built" in r for r in cpp.unavailable_reasons(x, x, x))


_GENERIC_SCRIPT = """
import sys, torch
from fastui import _C
from fastui.backends import cpp
g = torch.Generator().manual_seed(10)
out = []
for dtype in (torch.bfloat16, torch.float16):
    x = torch.randn(3, 1000, generator=g).to(dtype)
    df = (x.float() + torch.randn(3, 1000, generator=g)).to(dtype)
    out.append(cpp.dsm_forward(df, x, torch.tensor([0.3, 1.0, 7.0]), True)[2].view(torch.int16))
torch.save((_C.SIMD, out), sys.argv[1])
"""


@needs_module
def test_generic_and_simd_builds_of_the_kernels_round_identically(tmp_path):
    """core_cpu.cpp compiles its kernels twice (any x86-64, and AVX2/FMA/F16C picked at run time); the elementwise
    outputs of both must be bit-identical (FASTUI_CPU_GENERIC=1 forces the first)."""
    import subprocess
    import sys

    results = {}
    for name, extra in (("default", {}), ("generic", {"FASTUI_CPU_GENERIC": "1"})):
        path = tmp_path / f"{name}.pt"
        env = {**os.environ, **extra}
        subprocess.run([sys.executable, "-c", _GENERIC_SCRIPT, str(path)], check=True, env=env, timeout=120)
        results[name] = torch.load(path)
    assert results["generic"][0] == "generic"
    for a, b in zip(results["default"][1], results["generic"][1]):
        assert torch.equal(a, b)
