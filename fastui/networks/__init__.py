"""Networks: EDM-preconditioned DDPM++ (SongUNet) and ADM (DhariwalUNet) denoisers (contract 2).

An architecture is a JSON-serialisable dict::

    {"model": "SongUNet" | "DhariwalUNet", "img_resolution": 32, "img_channels": 1, "label_dim": 10,
     "sigma_data": 0.5, "precond": "edm" | "vp", "precond_kwargs": {...}, "kwargs": {...backbone kwargs...}}

``{"model": "MLP", ...}`` (the engine's toy vector denoiser, ``fastui.train.mlp``) is dispatched too.
``build(arch)`` returns a ``Denoiser`` with ``forward(x, sigma, class_labels=None)`` and ``encode(...)``.
Presets: ``ddpmpp_cifar10_arch`` (EDM's CIFAR-10 DDPM++, ~56M), ``adm_imagenet64_arch`` (EDM's ImageNet-64 ADM,
~296M), ``small_unet_arch`` (the demo teacher, ~1.6M), ``tiny_arch`` (any arch shrunk for tests / --dry-run).

Example::

    from fastui import networks
    net = networks.build(networks.small_unet_arch())
    d = net(torch.randn(4, 1, 32, 32), torch.full([4], 2.5), torch.tensor([0, 1, 2, 3]))
"""

from __future__ import annotations

import copy

from torch import nn

from .layers import ATTENTION_BACKENDS, get_attention_backend, set_attention_backend
from .precond import Denoiser, edm_coefficients, logit_mean, vp_coefficients
from .unets import DhariwalUNet, SongUNet

MODELS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
_ARCH_KEYS = {"model", "img_resolution", "img_channels", "label_dim", "sigma_data", "precond", "precond_kwargs",
              "kwargs"}


def build(arch: dict) -> Denoiser:
    """Build a preconditioned denoiser from an architecture dict.

    Args:
        arch: see the module docstring. ``label_dim``, ``sigma_data`` (0.5), ``precond`` ("edm"),
            ``precond_kwargs`` ({}), ``kwargs`` ({}) are optional.
    Returns:
        ``Denoiser`` (randomly initialised; load weights with ``load_state_dict``). Works under
        ``with torch.device("meta"):`` to count parameters without memory.
    """
    name = arch.get("model")
    unknown = set(arch) - _ARCH_KEYS
    if unknown and name != "MLP":
        raise ValueError(f"unknown arch keys {sorted(unknown)}; valid: {sorted(_ARCH_KEYS)}")
    if name == "MLP":  # the engine's vector denoiser for toy runs (its arch has its own keys)
        from fastui.train.mlp import MLPDenoiser

        return MLPDenoiser(arch)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}, MLP")
    arch = copy.deepcopy(dict(arch))
    res, ch, labels = int(arch["img_resolution"]), int(arch["img_channels"]), int(arch.get("label_dim", 0))
    model = MODELS[name](img_resolution=res, in_channels=ch, out_channels=ch, label_dim=labels,
                         **arch.get("kwargs", {}))
    return Denoiser(model, arch, res, ch, labels, sigma_data=arch.get("sigma_data", 0.5),
                    precond=arch.get("precond", "edm"), precond_kwargs=arch.get("precond_kwargs"))


def ddpmpp_cifar10_arch(cond: bool = False, precond: str = "vp") -> dict:
    """EDM's CIFAR-10 DDPM++ (edm-cifar10-32x32-{uncond,cond}-vp): 128 channels, mult (2,2,2), 4 blocks,
    attention at 16x16, dropout 0.13, augmentation labels (augment_dim 9)."""
    return {"model": "SongUNet", "img_resolution": 32, "img_channels": 3, "label_dim": 10 if cond else 0,
            "sigma_data": 0.5, "precond": precond,
            "kwargs": {"model_channels": 128, "channel_mult": [2, 2, 2], "channel_mult_emb": 4, "num_blocks": 4,
                       "attn_resolutions": [16], "dropout": 0.13, "augment_dim": 9, "embedding_type": "positional",
                       "channel_mult_noise": 1, "encoder_type": "standard", "decoder_type": "standard",
                       "resample_filter": [1, 1]}}


def adm_imagenet64_arch() -> dict:
    """EDM's ImageNet-64 ADM (edm-imagenet-64x64-cond-adm): 192 channels, mult (1,2,3,4), 3 blocks, attention at
    32/16/8, dropout 0.1, 1000 classes, no augmentation, EDM preconditioning."""
    return {"model": "DhariwalUNet", "img_resolution": 64, "img_channels": 3, "label_dim": 1000, "sigma_data": 0.5,
            "precond": "edm",
            "kwargs": {"model_channels": 192, "channel_mult": [1, 2, 3, 4], "channel_mult_emb": 4, "num_blocks": 3,
                       "attn_resolutions": [32, 16, 8], "dropout": 0.1}}


def small_unet_arch(img_resolution: int = 32, img_channels: int = 1, label_dim: int = 10, model_channels: int = 32,
                    channel_mult=(1, 2, 2), num_blocks: int = 2, attn_resolutions=(), dropout: float = 0.0) -> dict:
    """The demo-size DDPM++ (SongUNet, EDM preconditioning); defaults: Fashion-MNIST 1x32x32, 10 classes.

    The bottleneck (8x8) keeps DDPM++'s one attention block; ``attn_resolutions`` adds more.
    """
    return {"model": "SongUNet", "img_resolution": img_resolution, "img_channels": img_channels,
            "label_dim": label_dim, "sigma_data": 0.5, "precond": "edm",
            "kwargs": {"model_channels": model_channels, "channel_mult": list(channel_mult), "num_blocks": num_blocks,
                       "attn_resolutions": list(attn_resolutions), "dropout": dropout,
                       "embedding_type": "positional", "channel_mult_noise": 1, "encoder_type": "standard",
                       "decoder_type": "standard", "resample_filter": [1, 1]}}


def tiny_arch(arch: dict | None = None) -> dict:
    """The same architecture family shrunk to a few thousand parameters (tests, --dry-run).

    Keeps model type, geometry, labels, precond and augmentation; sets 8-16 channels, 2 levels, 1 block,
    attention at the lower resolution (ADM: EDM's 64 channels per head means no heads below 64 channels).
    """
    arch = copy.deepcopy(arch) if arch is not None else small_unet_arch()
    kw = dict(arch.get("kwargs", {}))
    res = int(arch["img_resolution"])
    kw.update(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[res // 2], dropout=0.0)
    if "channel_mult_emb" in kw:
        kw["channel_mult_emb"] = 2
    arch["kwargs"] = kw
    return arch


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works for meta tensors)."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "ATTENTION_BACKENDS",
    "MODELS",
    "Denoiser",
    "DhariwalUNet",
    "SongUNet",
    "adm_imagenet64_arch",
    "build",
    "count_parameters",
    "ddpmpp_cifar10_arch",
    "edm_coefficients",
    "get_attention_backend",
    "logit_mean",
    "set_attention_backend",
    "small_unet_arch",
    "tiny_arch",
    "vp_coefficients",
]
