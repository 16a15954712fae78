"""DeepSpeed on 2 CPU ranks (gloo): ZeRO 0-3 parity with a single process, gradient isolation, per-rank memory.

Two launches only (DeepSpeed start-up is expensive on the CPU): one plain single process (torch backend, the
reference) and one ``torchrun --nproc_per_node 2`` that runs every ZeRO stage in turn. This file is also the worker
(``python tests/test_train_dist.py worker OUT [--ref]``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from testkit import mlp_uni_config

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ITERATIONS = 3
# fp32, 4-wide MLPs, lr 1e-3, 3 iterations: the 2-rank runs average two half-batch gradients where the reference
# sums one batch, so results differ by float rounding only (measured max |diff| 6.1e-7).
ATOL = 2e-5


def _config(backend: str, stage: int, world: int, grad_accum: int = 1):
    cfg = mlp_uni_config(4, 4 // world // grad_accum, backend)
    cfg.optim.lr_g = cfg.optim.lr_fake = 1e-3
    cfg.batch.noise = "global"
    # The fake-score value clip acts on each rank's micro-batch gradient before the reduction (a tensor hook), so
    # it is the one setting whose result depends on the number of ranks; parity is checked without it.
    cfg.optim.fake_grad_clip = 0.0
    cfg.engine.zero_stage = stage
    return cfg


def _full(module) -> dict:
    """Full parameters (gathered under ZeRO-3) as CPU clones."""
    import deepspeed

    params = list(module.parameters())
    ctx = deepspeed.zero.GatheredParameters(params) if any(hasattr(p, "ds_tensor") for p in params) else None
    if ctx is None:
        return {n: p.detach().cpu().clone() for n, p in module.named_parameters()}
    with ctx:
        return {n: p.detach().cpu().clone() for n, p in module.named_parameters()}


def _opt_tensors(engine) -> list:
    """Every tensor of an engine's optimizer state (DeepSpeed's ZeRO partitions included), cloned."""
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    out = []
    for st in inner.state.values():
        out += [v.detach().clone() for v in st.values() if torch.is_tensor(v)]
    for attr in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        out += [t.detach().clone() for t in (getattr(opt, attr, None) or []) if torch.is_tensor(t)]
    return out


def worker(out_dir: Path, ref: bool) -> None:
    import torch.distributed as dist

    from fastui.train import step as S
    from fastui.train.config import resolve
    from fastui.train.run import setup
    from fastui.train.schedule import Phase

    results = {}
    runs = [("torch", 0, 1), ("torch", 0, 2)] if ref else [("deepspeed", s, 1) for s in (0, 1, 2, 3)]
    for backend, stage, accum in runs:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cfg = _config(backend, stage, world, accum)
        res = resolve(cfg, world)
        s = setup(cfg, res)
        ph = Phase(True, True)
        isolation = []
        for it in range(ITERATIONS):
            for sub in range(res.k_fake):
                for micro in range(res.grad_accum):
                    S.fake_micro_step(s.ctx, it, sub, micro)
            before = (_full(s.fake.module), _opt_tensors(s.fake), _full(s.teacher.module))
            for micro in range(res.grad_accum):
                S.generator_micro_step(s.ctx, it, micro, ph)
            after = (_full(s.fake.module), _opt_tensors(s.fake), _full(s.teacher.module))
            same_params = all(torch.equal(before[0][k], after[0][k]) for k in before[0])
            same_opt = len(before[1]) == len(after[1]) and all(torch.equal(a, b) for a, b in zip(before[1], after[1]))
            same_teacher = all(torch.equal(before[2][k], after[2][k]) for k in before[2])
            frozen = list(s.fake.module.parameters()) + list(s.teacher.module.parameters())
            no_grads = all(p.grad is None for p in frozen)
            isolation.append((same_params, same_opt, same_teacher, no_grads))
        p_bytes, o_bytes = 0, 0
        for eng in (s.gen, s.fake):
            pb, ob = eng.state_bytes()
            p_bytes, o_bytes = p_bytes + pb, o_bytes + ob
        results[f"{backend}{stage}" + ("_accum" if accum > 1 else "")] = {
            "generator": _full(s.gen.module), "fake": _full(s.fake.module), "isolation": isolation,
            "bytes": p_bytes + o_bytes}
        dist.barrier()
    if dist.get_rank() == 0:
        torch.save(results, out_dir / ("ref.pt" if ref else "dist.pt"))


def _env():
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    return env


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero")
    me = str(Path(__file__).resolve())
    r1 = subprocess.run([PY, me, "worker", str(out), "--ref"], env=_env(), check=False, capture_output=True,
                        text=True, timeout=600)
    assert r1.returncode == 0, r1.stdout[-3000:] + r1.stderr[-3000:]
    r2 = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29611", me,
                         "worker", str(out)], env=_env(), check=False, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    return torch.load(out / "ref.pt", weights_only=False), torch.load(out / "dist.pt", weights_only=False)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_two_ranks_match_single_process_at_every_zero_stage(dist_results, stage):
    ref, dist_ = dist_results
    got, want = dist_[f"deepspeed{stage}"], ref["torch0"]
    for net in ("generator", "fake"):
        assert want[net].keys() == got[net].keys()
        for k in want[net]:
            torch.testing.assert_close(got[net][k], want[net][k], atol=ATOL, rtol=0, msg=f"{net}.{k} stage {stage}")


def test_gradient_accumulation_matches_one_large_micro_batch(dist_results):
    ref, _ = dist_results
    for net in ("generator", "fake"):
        for k, want in ref["torch0"][net].items():
            torch.testing.assert_close(ref["torch0_accum"][net][k], want, atol=ATOL, rtol=0, msg=f"{net}.{k}")


def test_training_moved_the_parameters(dist_results):
    """Guards the parity test against a run that trains nothing: the reference's generator must have changed."""
    from fastui.train.config import resolve
    from fastui.train.models import build_networks

    ref, _ = dist_results
    cfg = _config("torch", 0, 1)
    resolve(cfg, 1)
    _, gen0, _ = build_networks(cfg, torch.device("cpu"))
    init = {n: p.detach() for n, p in gen0.named_parameters()}
    assert max((ref["torch0"]["generator"][k] - init[k]).abs().max().item() for k in init) > 1e-4


@pytest.mark.parametrize("run", ["torch0", "deepspeed0", "deepspeed1", "deepspeed2", "deepspeed3"])
def test_generator_step_leaves_fake_score_and_teacher_untouched(dist_results, run):
    ref, dist_ = dist_results
    res = (ref | dist_)[run]
    for it, (same_params, same_opt, same_teacher, no_grads) in enumerate(res["isolation"]):
        assert same_params, f"{run}: fake-score parameters changed in the generator step of iteration {it}"
        assert same_opt, f"{run}: fake-score optimizer state changed in the generator step of iteration {it}"
        assert same_teacher, f"{run}: teacher parameters changed in iteration {it}"
        assert no_grads, f"{run}: fake-score or teacher parameters hold a .grad after the generator step"


def test_zero3_partitions_per_rank_parameter_and_optimizer_bytes(dist_results):
    """fp32, 2 ranks: ZeRO-3 halves parameters and Adam moments but DeepSpeed adds an fp32 master partition, so
    per-rank bytes are (1/2 + 1/2 + 2/2) / 3 = 2/3 of stage 0; stages 1-2 keep full parameters: (1 + 1/2 + 2/2) / 3."""
    _, dist_ = dist_results
    base = dist_["deepspeed0"]["bytes"]
    assert dist_["deepspeed3"]["bytes"] / base == pytest.approx(2 / 3, abs=0.03)
    assert dist_["deepspeed1"]["bytes"] / base == pytest.approx(5 / 6, abs=0.03)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(Path(sys.argv[2]), "--ref" in sys.argv)
