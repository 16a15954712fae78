"""The ops layer: public API parity with the reference (reductions, stats, presets, DSM), dtype handling, the
nn.Module wrappers, and torch.compile(fullgraph=True) through the custom op."""

import pytest
import torch

import fastui
import fastui.functional as FF
from fastui import ops
from fastui.losses import FakeScoreLoss, ScoreDistillLoss


def _inputs(batch=4, chw=(3, 8, 8), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *chw, generator=g)
    dt = 0.5 * x + 0.3 * torch.randn(batch, *chw, generator=g)
    df = dt + 0.1 * torch.randn(batch, *chw, generator=g)
    sigma = 0.8 + torch.rand(batch, generator=g)
    log_ratio = 0.5 * torch.randn(batch, generator=g)
    return [t.to(dtype).requires_grad_(True) for t in (x, dt, df)] + [sigma, log_ratio]


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def test_public_api_is_the_dispatched_op():
    assert fastui.score_distill_loss is ops.score_distill_loss
    assert fastui.ScoreDistillLoss is ScoreDistillLoss


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_and_stats_match_reference(reduction):
    x, dt, df, sigma, lr = _inputs()
    x.data[2, 0, 0, 0] = float("nan")
    ref, ref_stats = FF.score_distill_loss(x, dt, df, sigma, lr, divergence="js", reduction=reduction,
                                           return_stats=True)
    out, stats = ops.score_distill_loss(x, dt, df, sigma, lr, divergence="js", reduction=reduction,
                                        return_stats=True, backend="torch")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(stats["valid"], ref_stats["valid"]) and int(stats["n_nonfinite"]) == 1
    seed = torch.randn(out.shape)
    for a, b in zip(_grads((out * seed).sum(), [x, dt, df]), _grads((ref * seed).sum(), [x, dt, df])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mixed_input_dtypes_unify_and_gradients_come_back_in_each_dtype():
    x, dt, df, sigma, lr = _inputs()
    x_b = x.detach().to(torch.bfloat16).requires_grad_(True)
    df_h = df.detach().to(torch.float16).requires_grad_(True)
    loss = ops.score_distill_loss(x_b, dt, df_h, sigma, lr, divergence="fkl")
    gx, gdt, gdf = _grads(loss, [x_b, dt, df_h])
    assert (gx.dtype, gdt.dtype, gdf.dtype) == (torch.bfloat16, torch.float32, torch.float16)
    ref = FF.score_distill_loss(x_b, dt, df_h, sigma, lr, divergence="fkl")
    for a, b in zip((gx, gdt, gdf), _grads(ref, [x_b, dt, df_h])):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=1e-3)


def test_grad_output_scales_the_stored_gradients():
    x, dt, df, sigma, lr = _inputs()
    per = ops.score_distill_loss(x, dt, df, sigma, lr, reduction="none")
    w = torch.tensor([0.5, -2.0, 3.0, 0.0])
    got = _grads((per * w).sum(), [x, dt, df])
    ref = FF.score_distill_loss(x, dt, df, sigma, lr, reduction="none")
    for a, b in zip(got, _grads((ref * w).sum(), [x, dt, df])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_no_grad_path_returns_the_same_loss():
    x, dt, df, sigma, lr = _inputs()
    with torch.no_grad():
        loss = ops.score_distill_loss(x, dt, df, sigma, lr, divergence="pearson")
    torch.testing.assert_close(loss, FF.score_distill_loss(x, dt, df, sigma, lr, divergence="pearson"), rtol=1e-5,
                               atol=1e-5)


def test_validation_errors_are_the_reference_errors():
    x, dt, df, sigma, _lr = _inputs()
    with pytest.raises(ValueError, match="d_teacher has shape"):
        ops.score_distill_loss(x, dt[:, :2], df, sigma)
    with pytest.raises(ValueError, match="sigma must have shape"):
        ops.score_distill_loss(x, dt, df, sigma[:2])
    with pytest.raises(ValueError, match="reduction must be"):
        ops.score_distill_loss(x, dt, df, sigma, reduction="avg")


@pytest.mark.parametrize("method", ["di", "dmd", "sid", "sim", "fdistill", "uni"])
def test_preset_mean_losses_match_reference(method):
    x, dt, df, sigma, lr = _inputs(seed=3)
    ref = FF.preset_loss(method, x, dt, df, sigma, lr)
    out = ops.preset_loss(method, x, dt, df, sigma, lr)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(out, [x, dt, df]), _grads(ref, [x, dt, df])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fake_score_module_matches_reference_and_leaves_x_g_without_gradient():
    x, _, df, sigma, _ = _inputs(seed=4)
    loss = FakeScoreLoss()(df, x, sigma)
    ref = FF.fake_score_loss(df, x, sigma)
    torch.testing.assert_close(loss, ref)
    g_df, g_x = torch.autograd.grad(loss, [df, x], allow_unused=True)
    assert g_x is None
    torch.testing.assert_close(g_df, torch.autograd.grad(ref, df)[0])


def test_module_passes_its_constructor_arguments():
    x, dt, df, sigma, lr = _inputs(seed=5)
    crit = ScoreDistillLoss(divergence="hellinger", weighting="none", reduction="sum", c_clip=3.0)
    ref = FF.score_distill_loss(x, dt, df, sigma, lr, divergence="hellinger", weighting="none", reduction="sum",
                                c_clip=3.0)
    torch.testing.assert_close(crit(x, dt, df, sigma, lr), ref)
    assert "hellinger" in repr(crit)


def test_compiled_fullgraph_function_calling_the_fused_loss_matches_eager():
    x, dt, df, sigma, lr = _inputs(seed=6)

    def step(x, dt, df, sigma, lr):
        loss = fastui.score_distill_loss(x * 1.0, dt, df, sigma, lr, divergence="fkl")
        return loss * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(x, dt, df, sigma, lr)
    ref = step(x, dt, df, sigma, lr)
    torch.testing.assert_close(out, ref)
    for a, b in zip(_grads(out, [x, dt, df]), _grads(ref, [x, dt, df])):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_compiled_with_inductor_fullgraph_matches_eager():
    x, dt, df, sigma, lr = _inputs(seed=7)

    def step(x, dt, df, sigma, lr):
        return fastui.score_distill_loss(x, dt, df, sigma, lr, divergence="js") + fastui.ops.fake_score_loss(
            df, x, sigma)

    out = torch.compile(step, fullgraph=True)(x, dt, df, sigma, lr)
    ref = step(x, dt, df, sigma, lr)
    torch.testing.assert_close(out, ref)
    for a, b in zip(_grads(out, [x, dt, df]), _grads(ref, [x, dt, df])):
        torch.testing.assert_close(a, b)
