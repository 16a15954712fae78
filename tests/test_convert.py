"""fastui convert-edm: EDM snapshot pickles are read without running code from the file."""

import pickle
import sys
import types

import pytest
import torch

from fastui import networks as N
from fastui.convert import ConvertError, load_edm_snapshot, main, restricted_load
from fastui.teachers import load_checkpoint

EXECUTED = []


@pytest.fixture
def fake_edm_modules(monkeypatch):
    """Fake ``torch_utils.persistence`` and ``training.networks`` modules, like EDM's, for pickling.

    The fake reconstruct hook records a call: if the restricted unpickler ever resolved it, the test sees it.
    """
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        EXECUTED.append(meta["class_name"])
        raise AssertionError("EDM's reconstruct hook must never run during fastui conversion")

    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pkg = types.ModuleType("torch_utils")
    pkg.persistence = persistence
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)

    training = types.ModuleType("training")
    tnet = types.ModuleType("training.networks")

    class Persistent:
        """Pickles like an EDM persistent class: reconstruct hook + meta with module source and state."""

        def __init__(self, class_name, state):
            self.class_name, self.state = class_name, state

        def __reduce__(self):
            meta = {"type": "class", "version": 6, "class_name": self.class_name, "state": self.state,
                        "module_src": "import os\nos.environ['FASTUI_PWNED'] = '1'\n"}
            return (_reconstruct_persistent_obj, (meta,))

    class EDMPrecond:  # a directly pickled (non-persistent) EDM class
        pass

    EDMPrecond.__module__ = "training.networks"
    EDMPrecond.__qualname__ = "EDMPrecond"
    tnet.EDMPrecond = EDMPrecond
    training.networks = tnet
    monkeypatch.setitem(sys.modules, "training", training)
    monkeypatch.setitem(sys.modules, "training.networks", tnet)
    EXECUTED.clear()
    return types.SimpleNamespace(Persistent=Persistent, EDMPrecond=EDMPrecond)


def _persistent_tree(fake, module, class_name, init_kwargs=None):
    """Mirror a torch module tree as EDM persistent objects holding parameters, buffers and children."""
    params = {k: (torch.nn.Parameter(v.detach().clone(), requires_grad=False) if v is not None else None)
              for k, v in module._parameters.items()}
    buffers = {k: (v.clone() if v is not None else None) for k, v in module._buffers.items()}
    children = {k: _persistent_tree(fake, m, type(m).__name__) for k, m in module._modules.items() if m is not None}
    state = {"_parameters": params, "_buffers": buffers, "_modules": children, "training": False,
             "_non_persistent_buffers_set": set(), "_init_args": (), "_init_kwargs": init_kwargs}
    return fake.Persistent(class_name, state)


def _snapshot(tmp_path, fake, arch, init_kwargs, class_name):
    net = N.build(arch)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ema = _persistent_tree(fake, net, class_name, init_kwargs)
    wrapper_state = ema.state
    # EDM's wrapper holds the backbone under "model"; our Denoiser already does.
    assert set(wrapper_state["_modules"]) == {"model"}
    path = tmp_path / "network-snapshot-000000.pkl"
    with open(path, "wb") as f:
        pickle.dump({"ema": ema, "loss_fn": None, "augment_pipe": None,
                     "dataset_kwargs": {"path": "datasets/x.zip", "use_labels": True}}, f)
    return path, net


def test_converter_rebuilds_vp_ddpmpp_snapshot_without_executing_embedded_code(tmp_path, fake_edm_modules,
                                                                              monkeypatch):
    monkeypatch.delenv("FASTUI_PWNED", raising=False)
    arch = N.tiny_arch(N.ddpmpp_cifar10_arch(cond=True, precond="vp"))
    init_kwargs = dict(img_resolution=32, img_channels=3, label_dim=10, use_fp16=False, beta_d=19.9, beta_min=0.1,
                       M=1000, epsilon_t=1e-5, model_type="SongUNet", **arch["kwargs"])
    path, ref = _snapshot(tmp_path, fake_edm_modules, arch, init_kwargs, "VPPrecond")
    net = load_edm_snapshot(path)
    assert EXECUTED == [] and "FASTUI_PWNED" not in __import__("os").environ
    assert net.precond == "vp" and net.label_dim == 10 and net.arch["model"] == "SongUNet"
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x, torch.tensor([0.5, 3.0]), torch.tensor([1, 2])),
                               ref.eval()(x, torch.tensor([0.5, 3.0]), torch.tensor([1, 2])))


def test_convert_cli_writes_a_loadable_checkpoint_for_edm_adm(tmp_path, fake_edm_modules):
    arch = N.tiny_arch(N.adm_imagenet64_arch())
    init_kwargs = dict(img_resolution=64, img_channels=3, label_dim=1000, use_fp16=False, sigma_min=0,
                       sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet", **arch["kwargs"])
    path, ref = _snapshot(tmp_path, fake_edm_modules, arch, init_kwargs, "EDMPrecond")
    assert main([str(path), str(tmp_path / "ckpt")]) == 0
    net = load_checkpoint(tmp_path / "ckpt")
    assert net.precond == "edm" and net.label_dim == 1000
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k


def test_directly_pickled_edm_class_becomes_an_inert_stub(tmp_path, fake_edm_modules):
    obj = fake_edm_modules.EDMPrecond()
    obj._init_kwargs = {"img_resolution": 8}
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"ema": obj}))
    data = restricted_load(path)
    assert type(data["ema"]).__name__ == "EDMPrecond" and data["ema"].init_kwargs == {"img_resolution": 8}
    assert not isinstance(data["ema"], fake_edm_modules.EDMPrecond)


def test_numpy_arrays_and_scalars_inside_edm_state_are_read(tmp_path, fake_edm_modules):
    import numpy as np

    obj = fake_edm_modules.EDMPrecond()
    obj.table = np.arange(6, dtype=np.float32).reshape(2, 3)
    obj.p = np.float64(0.12)
    path = tmp_path / "np.pkl"
    path.write_bytes(pickle.dumps({"augment_pipe": obj}))
    state = restricted_load(path)["augment_pipe"].state
    assert state["table"].tolist() == [[0, 1, 2], [3, 4, 5]] and state["p"] == 0.12


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_pickle_with_foreign_global_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": _Evil()}))
    with pytest.raises(ConvertError, match="refusing to load global"):
        load_edm_snapshot(path)


@pytest.mark.parametrize("content", [b"this is not a pickle", pickle.dumps({"weights": [1, 2, 3]}),
                                     pickle.dumps([1, 2])])
def test_non_snapshot_files_give_a_clear_error(tmp_path, content, capsys):
    path = tmp_path / "thing.pkl"
    path.write_bytes(content)
    with pytest.raises(ConvertError):
        load_edm_snapshot(path)
    assert main([str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "fastui convert-edm:" in err and not (tmp_path / "out").exists()
