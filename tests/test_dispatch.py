"""Backend dispatch: explicit choices fail loudly with reasons, the automatic choice falls back and says so once."""

import logging

import pytest
import torch

import fastui
import fastui.backends as B


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, 4, 4, generator=g).to(dtype) for _ in range(3)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_explicit_cuda_backend_without_gpu_raises_with_reasons(monkeypatch):
    monkeypatch.setenv("FASTUI_BACKEND", "cuda")
    x, dt, df = _inputs()
    with pytest.raises(B.BackendUnavailable, match="'cuda' \\(explicitly requested\\) cannot run") as info:
        fastui.score_distill_loss(x, dt, df, sigma=1.0)
    assert B.reasons("cuda", x, dt, df)[0] in str(info.value)


def test_unknown_backend_name_lists_the_choices(monkeypatch):
    monkeypatch.setenv("FASTUI_BACKEND", "cudnn")
    x, dt, df = _inputs()
    with pytest.raises(ValueError, match="torch, cpp, triton|cuda, triton, cpp, torch"):
        fastui.score_distill_loss(x, dt, df, sigma=1.0)


def test_automatic_choice_takes_the_first_backend_without_reasons(monkeypatch):
    monkeypatch.delenv("FASTUI_BACKEND", raising=False)
    x, dt, df = _inputs()
    expected = next(n for n in B.PRIORITY if not B.reasons(n, x, dt, df, automatic=True))
    assert B.select(x, dt, df).NAME == expected
    assert all(B.reasons(n, x, dt, df, automatic=True) for n in B.PRIORITY[:B.PRIORITY.index(expected)])


def test_automatic_choice_falls_back_to_torch_for_fp64_and_logs_once(monkeypatch, caplog):
    monkeypatch.delenv("FASTUI_BACKEND", raising=False)
    monkeypatch.setattr(B, "_logged", set())
    x, dt, df = _inputs(torch.float64)
    with caplog.at_level(logging.INFO, logger="fastui.backends"):
        for _ in range(3):
            fastui.score_distill_loss(x, dt, df, sigma=1.0)
    lines = [r for r in caplog.records if r.name == "fastui.backends"]
    assert len(lines) == 1 and "backend torch" in lines[0].getMessage()
    assert "cpp" in lines[0].getMessage()  # the skipped backends and why


def test_explicit_torch_backend_always_runs(monkeypatch):
    monkeypatch.setenv("FASTUI_BACKEND", "torch")
    x, dt, df = _inputs(torch.bfloat16)
    assert torch.isfinite(fastui.score_distill_loss(x, dt, df, sigma=1.0))


def test_explicit_backend_argument_wins_over_environment(monkeypatch):
    monkeypatch.setenv("FASTUI_BACKEND", "cuda")
    x, dt, df = _inputs()
    assert torch.isfinite(fastui.score_distill_loss(x, dt, df, sigma=1.0, backend="torch"))


def test_a_backend_whose_module_is_missing_reports_the_import_error(monkeypatch):
    monkeypatch.setitem(B._modules, "cuda", "fastui.backends.cuda not importable: ModuleNotFoundError: x")
    x, dt, df = _inputs()
    assert B.reasons("cuda", x, dt, df) == ["fastui.backends.cuda not importable: ModuleNotFoundError: x"]


def test_env_command_prints_every_backend_with_status(capsys):
    from fastui import env

    assert env.main([]) == 0
    out = capsys.readouterr().out
    for name in B.PRIORITY:
        assert f" {name} " in out
    assert "torch" in out and "ok" in out
