"""The 2-D toy distils the 8-Gaussian ring: the fkl student moves from the teacher-fit start onto the ring and drops no
mode, js stays bounded (the c-term clip); the CLI writes its PNG and rejects typos."""

from __future__ import annotations

import os

import pytest
import torch

from fastui import cli
from fastui.analytic import ring8
from fastui.toy import ToyConfig, energy_distance, mode_coverage, train

# Thresholds and why (measurements: README, "2-D toy distillation"). The full run (2000 steps of 1024, ~60 s of CPU)
# is what covers all 8 modes with >= 5% each; it is too long for the suite, so these short runs (seed 0, one thread,
# deterministic) check the earlier stage with a factor ~2 of margin:
# - fkl, 400 steps of 256 (~8 s of CPU): measured energy distance 0.0103 (0.42 at its start, i.e. with 0 generator
#   steps) and per-mode fractions 0.036..0.059; a dropped mode would hold ~0.
# - js, 200 steps of 1024 (~9 s of CPU): measured energy distance 0.056 with the default c_clip (0.42 at the start);
#   without the clip (earlier settings) the generator runs away from the ring (energy distance 1.4 at step 200).
SHORT = {"steps": 400, "pretrain_steps": 300, "n_eval": 2000, "batch": 256}
ED_MAX_SHORT = 0.02
MIN_MODE_FRACTION_SHORT = 0.018
JS_SHORT = {"divergence": "js", "steps": 200, "pretrain_steps": 300, "n_eval": 2000, "batch": 1024}
ED_MAX_JS_SHORT = 0.15


def test_metrics_separate_a_good_student_from_a_collapsed_one():
    teacher = ring8()
    g = torch.Generator().manual_seed(0)
    good, other = teacher.sample(2000, generator=g), teacher.sample(2000, generator=g)
    assert mode_coverage(good, teacher)[0] == 8
    assert energy_distance(good, other) < 0.005
    collapsed = good[(good - teacher.means[0].float()).norm(dim=1) < 0.3]  # the samples of one mode only
    assert mode_coverage(collapsed, teacher)[0] == 1
    assert energy_distance(collapsed, other) > 0.3
    disc = torch.rand(4000, 2, generator=g) * 2.4 - 1.2
    disc = disc[disc.norm(dim=1) < 1.2]  # smeared over the whole disc: near no mode
    assert mode_coverage(disc, teacher)[0] == 0


def test_forward_kl_student_reaches_the_ring_and_drops_no_mode():
    result = train(ToyConfig(method="uni", divergence="fkl", **SHORT))
    assert min(result.mode_fractions) > MIN_MODE_FRACTION_SHORT, result.mode_fractions
    assert result.energy_distance < ED_MAX_SHORT


def test_jensen_shannon_student_stays_on_the_ring_with_the_c_clip():
    result = train(ToyConfig(method="uni", **JS_SHORT))
    assert result.energy_distance < ED_MAX_JS_SHORT, result.energy_distance


def test_cli_writes_png_and_reports(tmp_path, capsys):
    out = tmp_path / "toy.png"
    assert cli.main(["toy", "--method", "dmd", "--steps", "3", "--pretrain-steps", "3", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    text = capsys.readouterr().out
    assert "energy distance" in text and "modes covered" in text


@pytest.mark.parametrize("argv", [["--divergence", "kl_typo"], ["--method", "nope"]])
def test_cli_rejects_unknown_names(argv):
    from fastui.toy import main

    with pytest.raises(SystemExit) as exc:
        main(argv + ["--steps", "1"])
    assert exc.value.code == 2


def test_default_output_path_is_under_runs_toy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from fastui.toy import main

    assert main(["--method", "sid", "--steps", "1", "--pretrain-steps", "1"]) == 0
    assert os.path.exists(tmp_path / "runs" / "toy" / "sid_none.png")  # sid has no divergence (as in --table)
    assert main(["--method", "uni", "--divergence", "alpha:0.5", "--steps", "1", "--pretrain-steps", "1"]) == 0
    assert os.path.exists(tmp_path / "runs" / "toy" / "uni_alpha0.5.png")
