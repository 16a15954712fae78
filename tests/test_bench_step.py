"""The step benchmark compares like with like: its eager reference and its fastui provider (the product's step with
the fused loss) make the same parameter updates in one iteration, in fp32, on a tiny network."""

import sys
from pathlib import Path

import torch

# bench/ is a directory of the repository, not part of the installed package: `pytest` (unlike `python -m pytest`)
# does not put the repository root on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench.step as step_bench

# Adam's first step is lr * g / (|g| + eps): with a tiny eps it is lr * sign(g), blind to the loss's scale and flipped
# by round-off where g ~ 0. eps = 1e-2 (above most |g| here) makes the update ~ lr * g / eps, so it tracks the
# gradient. Tolerance on the whole update's norm, relative to the update. Measured (fp32, this network): 1.4e-7 between
# the providers; a reference with SiD alpha = 1.0 instead of 1.2 (a small change at initialisation, where the fake
# score still almost equals the teacher) differs by 3.3e-4, so 1e-5 separates right from wrong.
LR, EPS = 1e-3, 1e-2
REL_TOL = 1e-5


def _updates(provider, batch_iterations=1):
    mods = provider.modules()
    before = {n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in mods.items()}
    for it in range(batch_iterations):
        provider.iteration(it)
    after = {n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in mods.items()}
    return before, {n: {k: after[n][k] - before[n][k] for k in before[n]} for n in mods}


def _flat(d):
    return torch.cat([v.reshape(-1).double() for v in d.values() if v.is_floating_point()])


def test_reference_and_fastui_provider_make_the_same_updates_in_one_fp32_iteration():
    torch.set_num_threads(1)  # shared CI machines: OpenMP barriers under load are slower than one thread
    arch = step_bench._arch("tiny")
    dev = torch.device("cpu")
    ref = step_bench.make_provider(arch, 4, step_bench.REF, dev, lr=LR, eps=EPS)
    fast = step_bench.make_provider(arch, 4, step_bench.Variant("fastui"), dev, lr=LR, eps=EPS)
    b_ref, d_ref = _updates(ref)
    b_fast, d_fast = _updates(fast)
    for name in ("generator", "fake", "teacher"):
        assert torch.equal(_flat(b_ref[name]), _flat(b_fast[name])), f"{name}: providers start from different weights"
    assert _flat(d_ref["teacher"]).abs().max() == 0 and _flat(d_fast["teacher"]).abs().max() == 0
    for name in ("generator", "fake"):
        a, b = _flat(d_ref[name]), _flat(d_fast[name])
        assert a.norm() > 0.1 * LR, f"{name}: the reference did not update"  # the comparison is not vacuous
        rel = ((a - b).norm() / a.norm()).item()
        assert rel < REL_TOL, f"{name}: updates differ by {rel:.2e} (relative norm)"


def test_activation_checkpointing_and_channels_last_leave_the_updates_unchanged():
    torch.set_num_threads(1)
    arch = step_bench._arch("tiny")
    dev = torch.device("cpu")
    plain = step_bench.make_provider(arch, 4, step_bench.Variant("fastui"), dev, lr=LR, eps=EPS)
    lean = step_bench.make_provider(arch, 4, step_bench.Variant("fastui+ckpt+cl", channels_last=True,
                                                                checkpoint=("teacher", "fake", "generator")),
                                    dev, lr=LR, eps=EPS)
    _, d_plain = _updates(plain)
    _, d_lean = _updates(lean)
    for name in ("generator", "fake"):
        a, b = _flat(d_plain[name]), _flat(d_lean[name])
        rel = ((a - b).norm() / a.norm()).item()
        assert rel < REL_TOL, f"{name}: updates differ by {rel:.2e} (relative norm)"
