"""``fastui convert-edm SNAPSHOT.pkl OUT_DIR``: EDM network-snapshot pickle -> fastui checkpoint directory.

EDM (Karras et al. 2022) saves ``network-snapshot-*.pkl`` as a pickle of ``{"ema": net, "loss_fn": ...,
"augment_pipe": ..., "dataset_kwargs": {...}}`` whose network objects are "persistent classes": each is stored as
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = {type, version, module_src,
class_name, state}``. Plain ``pickle.load`` would ``exec`` ``module_src``, i.e. run code from the file.

fastui never does that by default. ``RestrictedUnpickler`` resolves only an allow-list of globals: torch's
tensor/storage rebuild functions (the storage bytes are read with ``torch.load(weights_only=True)``),
``collections.OrderedDict``, a few builtins and numpy scalar types, and stand-ins for EDM's reconstruct hook and
classes. Every EDM object becomes an ``EDMStub`` (class name + state dict: ``_init_kwargs``, ``_parameters``,
``_buffers``, ``_modules``); ``module_src`` is read as a string and ignored. Anything else ("os.system", ...)
raises ``pickle.UnpicklingError``. The network is then rebuilt from its constructor arguments
(``EDMPrecond``/``VPPrecond`` with ``model_type`` SongUNet or DhariwalUNet) and its tensors are loaded with
``strict=True``.

``--trust-pickle`` instead uses plain ``pickle.load``; it needs EDM's source tree (``dnnlib``, ``torch_utils``)
importable, e.g. ``PYTHONPATH=/path/to/edm``, and runs the code stored in the pickle: only for files you trust.

Example::

    fastui convert-edm edm-cifar10-32x32-cond-vp.pkl teachers/cifar10-cond
    fastui sample --teacher teachers/cifar10-cond --steps 18 --out samples/
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import sys
from pathlib import Path

import torch

_PRECOND_NAMES = {"EDMPrecond": "edm", "VPPrecond": "vp"}
_VP_KEYS = ("beta_d", "beta_min", "M", "epsilon_t")
_EDM_ONLY_KEYS = ("sigma_min", "sigma_max", "use_fp16")  # runtime options of EDM's wrapper, not architecture
_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}


class ConvertError(ValueError):
    """The file is not an EDM network snapshot fastui can convert (message says why)."""


class EDMStub:
    """Inert stand-in for an object of an EDM class: remembers its class name and pickled state, runs nothing."""

    edm_module = "?"
    edm_class = "?"

    def __init__(self, class_name: str | None = None, state: dict | None = None, module: str | None = None):
        if class_name is not None:
            self.edm_class = class_name
        if module is not None:
            self.edm_module = module
        self.state = dict(state or {})

    def __setstate__(self, state):
        self.state = dict(state) if isinstance(state, dict) else {"_state": state}

    def __setitem__(self, key, value):  # dict subclasses (EasyDict) are rebuilt item by item
        self.state[key] = value

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    def __repr__(self):
        return f"EDMStub({self.edm_module}.{self.edm_class})"


def _stub_class(module: str, name: str) -> type:
    return type(name, (EDMStub,), {"edm_module": module, "edm_class": name, "__module__": "fastui.convert.stubs"})


def _reconstruct_persistent(meta):
    """Stand-in for EDM's ``_reconstruct_persistent_obj``: keeps ``class_name`` and ``state``; never execs."""
    if not isinstance(meta, dict) or "class_name" not in meta or "state" not in meta:
        raise pickle.UnpicklingError("malformed EDM persistent-object record (expected class_name and state)")
    return EDMStub(str(meta["class_name"]), meta["state"], module="<persistent>")


def _new_stub(cls, *args):
    if not (isinstance(cls, type) and issubclass(cls, EDMStub)):
        raise pickle.UnpicklingError(f"refusing to construct {cls!r}: not an allowed EDM stand-in")
    return cls.__new__(cls)


def _copyreg_reconstructor(cls, base, state):
    obj = _new_stub(cls)
    if state is not None:
        obj.__setstate__(state)
    return obj


def _load_storage_bytes(data: bytes):
    # The storage payload is itself a (legacy) torch.save file: read it in weights-only mode.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in _SAFE_TENSOR_FUNCS:
        raise pickle.UnpicklingError("refusing tensor rebuild through a non-allow-listed function")
    return func(*args)


_SAFE_TENSOR_FUNCS = {torch._utils._rebuild_tensor_v2, _rebuild_parameter}

_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("copyreg", "__newobj__"): _new_stub,
}
# EDM modules whose classes become inert stubs when pickled directly (not through the persistence hook).
_STUB_MODULE_PREFIXES = ("training.", "torch_utils.", "dnnlib", "torch.nn.modules.")


def _numpy_global(module: str, name: str):
    """numpy's data constructors (scalars, dtypes, arrays): they rebuild data and run no stored code."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("scalar", "_reconstruct"):
        return getattr(multiarray, name)
    if module == "numpy" and name in ("dtype", "ndarray"):
        return getattr(np, name)
    if module in ("numpy.dtypes",) and name.endswith("DType"):
        return getattr(np.dtypes, name, None)
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves allow-listed globals; EDM classes become ``EDMStub`` objects.

    Nothing stored in the file is executed: EDM's embedded module source is kept as an ignored string.
    """

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch" and name in _TORCH_DTYPES:
            return getattr(torch, name)
        np_obj = _numpy_global(module, name)
        if np_obj is not None:
            return np_obj
        if module.startswith(_STUB_MODULE_PREFIXES) and name.isidentifier():
            return _stub_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not part of an EDM network snapshot "
                                     f"(fastui's restricted unpickler runs no code from the file)")


def restricted_load(path) -> object:
    """Unpickle ``path`` with ``RestrictedUnpickler`` (see the module docstring)."""
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except pickle.UnpicklingError as err:
            raise ConvertError(f"{path}: {err}") from err
        except (EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
            raise ConvertError(f"{path} is not a readable pickle ({type(err).__name__}: {err}); expected an EDM "
                               f"network-snapshot .pkl") from err


def _state_dict_of(stub: EDMStub, prefix: str = "", out: dict | None = None) -> dict:
    """Collect parameters and persistent buffers of a stubbed nn.Module tree into a flat state dict."""
    out = {} if out is None else out
    state = stub.state
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, EDMStub):
            raise ConvertError(f"unexpected submodule type {type(child).__name__} at {prefix + name}")
        _state_dict_of(child, prefix + name + ".", out)
    return out


def arch_from_edm(class_name: str, init_kwargs: dict) -> dict:
    """The fastui architecture dict for an EDM precond class and its constructor arguments.

    Args:
        class_name: "EDMPrecond" or "VPPrecond".
        init_kwargs: EDM's recorded constructor kwargs (img_resolution, img_channels, label_dim, model_type,
            backbone kwargs, precond hyperparameters).
    """
    if class_name not in _PRECOND_NAMES:
        raise ConvertError(f"unsupported EDM network class {class_name!r}; supported: {', '.join(_PRECOND_NAMES)}")
    kw = dict(init_kwargs)
    precond = _PRECOND_NAMES[class_name]
    default_model = "DhariwalUNet" if precond == "edm" else "SongUNet"
    model = kw.pop("model_type", default_model)
    arch = {"model": model, "img_resolution": int(kw.pop("img_resolution")),
            "img_channels": int(kw.pop("img_channels")), "label_dim": int(kw.pop("label_dim", 0)),
            "sigma_data": float(kw.pop("sigma_data", 0.5)), "precond": precond}
    precond_kwargs = {k: kw.pop(k) for k in _VP_KEYS if k in kw}
    if precond == "vp" and precond_kwargs:
        arch["precond_kwargs"] = {k: (int(v) if k == "M" else float(v)) for k, v in precond_kwargs.items()}
    for k in _EDM_ONLY_KEYS:
        kw.pop(k, None)
    arch["kwargs"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}
    return arch


def _network_from_snapshot(data) -> tuple[dict, dict]:
    if isinstance(data, EDMStub) or not isinstance(data, dict):
        raise ConvertError("expected an EDM network snapshot: a pickled dict with an 'ema' network")
    if "ema" not in data:
        raise ConvertError(f"no 'ema' network in the snapshot (keys: {sorted(map(str, data))})")
    ema = data["ema"]
    if not isinstance(ema, EDMStub):
        raise ConvertError(f"'ema' is a {type(ema).__name__}, not an EDM network object")
    kwargs = ema.init_kwargs
    if not kwargs:
        raise ConvertError(f"'ema' ({ema.edm_class}) carries no recorded constructor arguments (_init_kwargs)")
    arch = arch_from_edm(ema.edm_class, kwargs)
    return arch, _state_dict_of(ema)


def load_edm_snapshot(path, trust_pickle: bool = False):
    """Read an EDM network snapshot into a fastui ``Denoiser`` (strict weight load).

    Args:
        path: ``network-snapshot-*.pkl``.
        trust_pickle: use plain ``pickle.load`` (executes code in the file; needs EDM's source importable).
    Returns:
        the network in eval mode (``.arch`` set).
    Raises:
        ConvertError for files that are not such snapshots.
    """
    from fastui import networks

    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    if trust_pickle:
        with open(path, "rb") as f:
            data = pickle.load(f)
        ema = data["ema"]
        arch = arch_from_edm(type(ema).__name__, dict(ema.init_kwargs))
        state = ema.state_dict()
    else:
        arch, state = _network_from_snapshot(restricted_load(path))
    try:
        net = networks.build(arch)
        net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConvertError(f"{path}: EDM weights do not fit the fastui {arch['model']}: {err}") from err
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    """``fastui convert-edm SNAPSHOT.pkl OUT_DIR``; returns 0, or 2 with a one-line error."""
    p = argparse.ArgumentParser(prog="fastui convert-edm", description="Convert an EDM network snapshot into a "
                                "fastui checkpoint directory (arch.json + weights.pt).")
    p.add_argument("snapshot", help="EDM network-snapshot-*.pkl")
    p.add_argument("out_dir", help="output checkpoint directory")
    p.add_argument("--trust-pickle", action="store_true",
                   help="plain pickle.load (runs code in the file; needs EDM's source tree on PYTHONPATH)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    from fastui.teachers import save_checkpoint

    try:
        net = load_edm_snapshot(args.snapshot, trust_pickle=args.trust_pickle)
    except (ConvertError, ImportError, ModuleNotFoundError) as err:
        print(f"fastui convert-edm: {err}", file=sys.stderr)
        return 2
    out = save_checkpoint(net, args.out_dir)
    n = sum(p.numel() for p in net.parameters())
    print(f"wrote {out} ({net.arch['model']}, precond {net.precond}, {n / 1e6:.2f}M params)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
