"""``schedule.share_samples``: the fake step trains on the generator step's samples, one generator forward fewer.

The specification is the unshared iteration: a fake step on given (detached) samples, then a generator step with a
fresh generator forward. The shared iteration draws the generator's samples once, keeps their graph across the fake
step's update and back-propagates the generator's loss through it; it must end in the same networks and optimizer
states, make one generator forward per iteration instead of two, and leave the generator step's draws as they were.
The worker runs in its own process (the engine sets up a process group); this file is also the worker
(``python tests/test_train_share_samples.py worker OUT``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from testkit import ROOT, clean_env, mlp_uni_config

ITERATIONS = 3


def _config(share: bool):
    cfg = mlp_uni_config(8)
    cfg.schedule.share_samples = share
    cfg.optim.lr_g = cfg.optim.lr_fake = 1e-3
    return cfg


def _state(s) -> dict:
    out = {}
    for name, eng in (("gen", s.gen), ("fake", s.fake)):
        out.update({f"{name}.{k}": v.detach().clone() for k, v in eng.module.state_dict().items()})
        for i, st in enumerate(eng.optimizer.state.values()):
            out.update({f"{name}.opt{i}.{k}": v.detach().clone() for k, v in st.items() if torch.is_tensor(v)})
    return out


def worker(out_dir: Path) -> None:
    import fastui
    from fastui.train import step as S
    from fastui.train.config import resolve
    from fastui.train.run import setup
    from fastui.train.schedule import Phase

    seen = {"fake_x": [], "gen_x": [], "gen_sigma": []}
    real_fake_loss, real_preset_loss = fastui.fake_score_loss, fastui.preset_loss

    def fake_loss_spy(d_fake, x_g, sigma, **kw):
        seen["fake_x"].append(x_g.detach().clone())
        return real_fake_loss(d_fake, x_g, sigma, **kw)

    def preset_loss_spy(preset, x_g, d_teacher, d_fake, sigma, *a, **kw):
        seen["gen_x"].append(x_g.detach().clone())
        seen["gen_sigma"].append(sigma.detach().clone())
        return real_preset_loss(preset, x_g, d_teacher, d_fake, sigma, *a, **kw)

    fastui.fake_score_loss, fastui.preset_loss = fake_loss_spy, preset_loss_spy
    results = {}
    for mode in ("shared", "reference", "plain", "warmup"):
        for v in seen.values():
            v.clear()
        cfg = _config(share=mode in ("shared", "warmup"))
        s = setup(cfg, resolve(cfg, 1))
        forwards = []
        s.gen.module.register_forward_hook(lambda m, i, o, log=forwards: log.append(torch.is_grad_enabled()))
        ph = Phase(mode != "warmup", True)
        for it in range(ITERATIONS):
            if mode == "reference":  # the specification: the same samples, drawn without a graph, then a fresh forward
                with torch.no_grad():
                    sample = S._generator_sample(s.ctx, it, 0)
                S.fake_micro_step(s.ctx, it, 0, 0, shared=sample)
                S.generator_micro_step(s.ctx, it, 0, ph)
            else:
                S.train_iteration(s.ctx, it, ph)
        results[mode] = {"state": _state(s), "forwards": forwards, **{k: list(v) for k, v in seen.items()}}
    torch.save(results, out_dir / "share.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("share_samples")
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "worker", str(out)], env=clean_env(),
                       check=False, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return torch.load(out / "share.pt", weights_only=False)


def test_shared_iteration_ends_where_the_fresh_forward_specification_does(runs):
    got, want = runs["shared"]["state"], runs["reference"]["state"]
    assert got.keys() == want.keys() and len(got) > 8
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)
    plain = runs["plain"]["state"]  # and the sharing matters: the unshared run's fake score trained on other samples
    assert not all(torch.equal(plain[k], want[k]) for k in want if k.startswith("fake."))


def test_one_generator_forward_per_iteration_with_its_graph(runs):
    assert runs["shared"]["forwards"] == [True] * ITERATIONS
    # unshared: a forward without a graph (the fake step's samples), then one with it (the generator step's)
    assert runs["plain"]["forwards"] == [False, True] * ITERATIONS


def test_the_fake_step_trains_on_the_generator_steps_samples(runs):
    sh = runs["shared"]
    assert len(sh["fake_x"]) == len(sh["gen_x"]) == ITERATIONS
    for a, b in zip(sh["fake_x"], sh["gen_x"]):
        assert torch.equal(a, b)
    pl = runs["plain"]
    assert not any(torch.equal(a, b) for a, b in zip(pl["fake_x"], pl["gen_x"]))


def test_the_generator_steps_draws_are_unchanged(runs):
    # the first iteration starts from the same networks: the generator step's latents, labels and sigma are the
    # unshared run's (only the fake step's draws move)
    sh, pl = runs["shared"], runs["plain"]
    assert torch.equal(sh["gen_x"][0], pl["gen_x"][0])
    for a, b in zip(sh["gen_sigma"], pl["gen_sigma"]):
        assert torch.equal(a, b)


def test_before_the_first_generator_step_the_fake_step_draws_its_own(runs):
    wu = runs["warmup"]
    assert wu["forwards"] == [False] * ITERATIONS and wu["gen_x"] == []
    assert len(wu["fake_x"]) == ITERATIONS


@pytest.mark.parametrize("override, needle", [({"k_fake": 2}, "k_fake = 2"), ({"grad_accum": 2}, "grad_accum = 2")])
def test_share_samples_needs_one_fake_step_and_one_micro_step(override, needle):
    from fastui.train.config import ConfigError, resolve

    cfg = _config(share=True)
    if "k_fake" in override:
        cfg.schedule.k_fake = override["k_fake"]
    else:
        cfg.batch.micro, cfg.batch.grad_accum = 4, override["grad_accum"]
    with pytest.raises(ConfigError, match="schedule.share_samples") as e:
        resolve(cfg, 1)
    assert needle in str(e.value)
    cfg.schedule.share_samples = False
    resolve(cfg, 1)  # the same settings without it are fine


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        worker(Path(sys.argv[2]))
    else:
        sys.exit("usage: python tests/test_train_share_samples.py worker OUT")
