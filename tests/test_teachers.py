"""fastui.teachers: checkpoint directories (contract 2), specs, analytic teachers, clear errors."""

import json

import pytest
import torch

from fastui import networks as N
from fastui import teachers
from fastui.teachers import TeacherError, load_checkpoint, load_teacher, save_checkpoint


def test_checkpoint_roundtrip_restores_arch_and_weights(tmp_path):
    net = N.build(N.tiny_arch(N.small_unet_arch()))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    out = save_checkpoint(net, tmp_path / "ckpt")
    assert sorted(q.name for q in out.iterdir()) == ["arch.json", "weights.pt"]
    assert json.loads((out / "arch.json").read_text()) == net.arch
    loaded = load_teacher(out)
    assert not loaded.training and loaded.arch == net.arch
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x, 1.0, torch.tensor([0, 5])), net.eval()(x, 1.0, torch.tensor([0, 5])))


def test_save_checkpoint_replaces_an_existing_directory_and_leaves_no_temporaries(tmp_path):
    a = N.build(N.tiny_arch(N.small_unet_arch()))
    b = N.build(N.tiny_arch(N.small_unet_arch(label_dim=0)))
    save_checkpoint(a, tmp_path / "ckpt")
    save_checkpoint(b, tmp_path / "ckpt")
    assert load_checkpoint(tmp_path / "ckpt").label_dim == 0
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_weights_file_with_code_is_not_loaded(tmp_path):
    net = N.build(N.tiny_arch(N.small_unet_arch()))
    out = save_checkpoint(net, tmp_path / "ckpt")
    torch.save({"model.x": object()}, out / "weights.pt")  # not a weights-only payload
    with pytest.raises(TeacherError, match="weights-only"):
        load_teacher(out)


def test_unknown_specs_and_plain_directories_give_clear_errors(tmp_path):
    with pytest.raises(TeacherError, match="cannot load teacher"):
        load_teacher(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match="not a fastui checkpoint"):
        load_teacher(tmp_path / "empty")
    with pytest.raises(TeacherError, match="unknown GMM preset"):
        load_teacher("gmm:ring9")


def test_demo_teacher_loads_when_shipped_or_explains_how_to_get_it():
    if teachers.is_checkpoint_dir(teachers.DEMO_TEACHER_DIR):
        net = load_teacher("demo")
        assert net.img_resolution == 32 and net.img_channels == 1
        assert sum(p.numel() for p in net.parameters()) * 4 <= 20e6  # shipped weights <= 20 MB fp32
    else:
        with pytest.raises(TeacherError, match="fastui teacher"):
            load_teacher("demo")


def test_analytic_specs_map_to_fastui_analytic():
    analytic = pytest.importorskip("fastui.analytic")
    ring = load_teacher("gmm:ring8")
    assert isinstance(ring, analytic.GMMTeacher) and isinstance(ring, teachers.GMMTeacher)
    g = load_teacher("gaussian:dim=3,mean=0.5,std=2")
    x = torch.zeros(4, 3, dtype=torch.float64)
    # exact Gaussian denoiser: mu + s^2/(s^2+sigma^2) (x - mu) with mu 0.5, s 2, sigma 1
    torch.testing.assert_close(g(x, 1.0).double(), torch.full((4, 3), 0.5 - 0.8 * 0.5, dtype=torch.float64))
    assert teachers.ring8 is analytic.ring8


def test_weights_that_do_not_fit_arch_json_are_reported(tmp_path):
    net = N.build(N.tiny_arch(N.small_unet_arch()))
    out = save_checkpoint(net, tmp_path / "ckpt")
    arch = json.loads((out / "arch.json").read_text())
    arch["kwargs"]["model_channels"] = 16
    (out / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(TeacherError, match="do not match arch.json"):
        load_teacher(out)
