"""Training configuration: parsing, overrides, validation, and errors that stop before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastui import divergences
from fastui.train.__main__ import main
from fastui.train.config import ConfigError, describe, load_config, resolve, to_dict
from fastui.train.engines import deepspeed_config

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs" / "toy_ring8.toml"
PRESETS = sorted(p for p in (ROOT / "configs").glob("*.toml")
                 if p.name.startswith(("cifar10_", "imagenet64_")))


def _fails_without_writing(tmp_path, capsys, *args) -> str:
    code = main(["--config", str(TOY), f"--run.out_dir={tmp_path / 'runs'}", *args])
    assert code == 2
    assert not (tmp_path / "runs").exists(), "a configuration error must not write anything"
    return capsys.readouterr().err


def test_typo_in_a_key_exits_2_naming_the_key_and_the_valid_ones(tmp_path, capsys):
    err = _fails_without_writing(tmp_path, capsys, "--loss.divergance=fkl")
    assert "loss.divergance" in err and "divergence" in err


def test_typo_in_a_toml_key_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(TOY.read_text().replace("lr_g =", "lr_gen ="))
    code = main(["--config", str(bad), f"--run.out_dir={tmp_path / 'runs'}"])
    assert code == 2 and not (tmp_path / "runs").exists()
    assert "optim.lr_gen" in capsys.readouterr().err


def test_unknown_divergence_exits_2_listing_the_registry(tmp_path, capsys):
    err = _fails_without_writing(tmp_path, capsys, "--loss.divergence=kl_typo")
    assert "kl_typo" in err and all(n in err for n in ("fkl", "jeffreys", "rkl"))


def test_missing_teacher_path_exits_2(tmp_path, capsys):
    err = _fails_without_writing(tmp_path, capsys, f"--teacher.spec={tmp_path / 'no_such_teacher'}")
    assert "no_such_teacher" in err and "does not exist" in err


def test_bad_choice_lists_the_valid_choices(tmp_path, capsys):
    err = _fails_without_writing(tmp_path, capsys, "--engine.zero_stage=4")
    assert "0, 1, 2, 3" in err


def test_batch_sizes_that_do_not_divide_exit_2(tmp_path, capsys):
    err = _fails_without_writing(tmp_path, capsys, "--batch.global_size=100", "--batch.micro=64")
    assert "batch.global_size" in err


def test_unknown_method_exits_2(tmp_path, capsys):
    err = _fails_without_writing(tmp_path, capsys, "--loss.method=sidx")
    assert "sidx" in err and "dmd2" in err


def test_overrides_are_typed_and_applied():
    cfg = load_config(TOY, ["--loss.divergence=jeffreys", "--run.seed", "7", "--optim.lr_g=2e-4",
                            "--run.tensorboard=false", "--loss.ratio_clip=[0.1, 20.0]"])
    assert (cfg.loss.divergence, cfg.run.seed, cfg.optim.lr_g, cfg.run.tensorboard) == ("jeffreys", 7, 2e-4, False)
    assert cfg.loss.ratio_clip == [0.1, 20.0]
    with pytest.raises(ConfigError, match="run.seed"):
        load_config(TOY, ["--run.seed=abc"])


def test_every_registered_divergence_is_accepted():
    for name in divergences.names():
        spec = "alpha:0.5" if name == "alpha" else name
        assert load_config(TOY, [f"--loss.divergence={spec}"]).loss.divergence == spec


def test_deepspeed_json_contradicting_the_batch_config_is_an_error(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 999}))
    cfg = load_config(TOY, ["--engine.backend=deepspeed", f"--engine.deepspeed_config={ds}"])
    with pytest.raises(ConfigError, match="train_batch_size"):
        deepspeed_config(cfg, resolve(cfg, 1))
    ds.write_text(json.dumps({"train_batch_size": cfg.batch.global_size, "zero_optimization": {"overlap_comm": True}}))
    merged = deepspeed_config(cfg, resolve(cfg, 1))
    assert merged["zero_optimization"] == {"stage": 0, "overlap_comm": True}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_reaches_the_published_global_batch_on_8_gpus(path):
    cfg = load_config(path)
    res = resolve(cfg, world=8)
    want = 8192 if "imagenet64" in path.name else 256
    assert res.global_size == res.micro * res.grad_accum * 8 == want
    ds = deepspeed_config(cfg, res)
    assert ds["train_batch_size"] == want and ds["gradient_accumulation_steps"] == res.grad_accum
    assert cfg.optim.beta1 == 0.0 and res.eps == 1e-6  # bf16 recipes: Adam(beta1 = 0), eps for reduced precision
    assert res.k_fake == (5 if cfg.loss.method in ("dmd2", "fdistill") else 1)


def test_presets_cover_the_published_recipes():
    names = {p.stem for p in PRESETS}
    for data in ("cifar10_uncond", "cifar10_cond", "imagenet64"):
        for method in ("uni_fkl", "uni_jeffreys", "sida", "sid", "dmd2", "fdistill"):
            assert f"{data}_{method}" in names


def test_describe_documents_every_field():
    text = describe()
    assert "[loss]" in text and "divergence" in text
    assert all("#  " not in line and line.rstrip()[-1] != "#" for line in text.splitlines() if "=" in line)


def test_fmnist_demo_configs_load_and_the_cpu_one_is_the_measured_cpu_run():
    """The CPU long config is the GPU config with the overrides of the measured CPU run
    (bench/results/longer_config.md, "On the CPU")."""
    cfgs = {p.stem: load_config(p) for p in (ROOT / "configs").glob("demo_fmnist*.toml")}
    assert {"demo_fmnist", "demo_fmnist_long", "demo_fmnist_gpu", "demo_fmnist_cpu"} <= set(cfgs)
    measured = load_config(ROOT / "configs" / "demo_fmnist_gpu.toml", [
        "--batch.global_size=32", "--batch.micro=32", "--discriminator.depth=4", "--run.snapshot_every_images=16000",
        "--run.ckpt_every_images=16000", "--run.progress=false", "--run.out_dir=runs/fmnist_cpu", "--run.name=long"])
    assert to_dict(cfgs["demo_fmnist_cpu"]) == to_dict(measured)


def test_readme_configuration_table_names_every_key():
    """README "Configuration reference": one row per section, naming each of its keys (docs that match the code)."""
    import dataclasses
    import re

    from fastui.train.config import _sections

    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `\[(\w+)\]` \| (.*) \|$",
                                                        (ROOT / "README.md").read_text(), re.MULTILINE)}
    for sec, cls in _sections().items():
        assert sec in rows, f"README configuration table lacks [{sec}]"
        for f in dataclasses.fields(cls):
            assert re.search(rf"\b{f.name}\b", rows[sec]), f"README configuration table lacks {sec}.{f.name}"
