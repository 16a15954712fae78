"""The three networks and the discriminator head (MATH §2), built from a config.

- teacher: ``fastui.teachers.load_teacher(spec)`` (fastui/EDM checkpoints, ``demo``, analytic specs), or a random
  network of ``teacher.arch`` (``spec = "random"``, tests and CPU smoke runs); frozen.
- generator and fake score: deep copies of the teacher; for a teacher without parameters (analytic) they are built
  from ``model.arch`` (e.g. the MLP of :mod:`fastui.train.mlp`).
- :class:`FakeScoreWithDisc`: the fake score plus its discriminator head in one module, so one engine (one optimizer)
  trains both and ZeRO-3 gathers parameters through a single ``forward``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from .config import Config, ConfigError

__all__ = [
    "FakeScoreWithDisc",
    "PixelHead",
    "build_network",
    "build_networks",
    "data_shape",
    "load_teacher",
    "resolve_arch",
    "save_network",
    "teacher_exists",
]


def resolve_arch(arch: dict) -> dict:
    """An arch dict, or ``{"preset": "<fastui.networks function>", **kwargs}`` expanded by calling it."""
    arch = dict(arch)
    if "preset" in arch:
        from .. import networks

        name = arch.pop("preset")
        fn = getattr(networks, name, None)
        if fn is None or not callable(fn) or not name.endswith("_arch"):
            raise ConfigError(f"unknown arch preset {name!r}; valid: ddpmpp_cifar10_arch, adm_imagenet64_arch, "
                              "small_unet_arch, tiny_arch")
        arch = fn(**arch)
    return arch


def build_network(arch: dict) -> nn.Module:
    """``fastui.networks.build`` plus the engine's ``MLP`` (vector data)."""
    arch = resolve_arch(arch)
    if arch.get("model") == "MLP":
        from .mlp import MLPDenoiser

        return MLPDenoiser(arch)
    from .. import networks

    try:
        return networks.build(arch)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"bad network arch {json.dumps(arch)}: {e}") from None


def tiny(arch: dict) -> dict:
    """A tiny stand-in of the same structure (``fastui.networks.tiny_arch``; MLPs get 32 hidden units)."""
    arch = resolve_arch(arch)
    if arch.get("model") == "MLP":
        return dict(arch, hidden=32, layers=2)
    from .. import networks

    return networks.tiny_arch(arch)


def teacher_exists(spec: str) -> bool:
    """Whether a teacher spec can be found without loading it (checked before a run directory is made)."""
    if spec == "random" or spec == "demo" or ":" in spec and not os.path.sep in spec.split(":", 1)[0]:
        return True
    return Path(spec).exists()


def load_teacher(spec: str, arch: dict, device, seed: int) -> nn.Module:
    """The frozen teacher. ``spec = "random"`` builds ``arch`` with parameters drawn from ``seed``."""
    if spec == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_network(arch)
    else:
        try:
            from ..teachers import load_teacher as _load
        except ImportError:  # the teachers module lands separately; analytic and plain checkpoints still work
            _load = _fallback_load_teacher
        net = _load(spec, device="cpu")
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _fallback_load_teacher(spec: str, device="cpu") -> nn.Module:
    if spec.startswith("gmm:ring8"):
        from ..analytic import ring8

        return ring8()
    p = Path(spec)
    if (p / "arch.json").is_file():
        net = build_network(json.loads((p / "arch.json").read_text()))
        net.load_state_dict(torch.load(p / "weights.pt", map_location="cpu", weights_only=True))
        return net
    raise ConfigError(f"cannot load teacher {spec!r} (fastui.teachers is not available)")


def save_network(module: nn.Module, state: dict, directory: str | os.PathLike) -> None:
    """Write ``arch.json`` + ``weights.pt`` (contract 2) atomically: a temporary directory, then a rename."""
    directory = Path(directory)
    tmp = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "arch.json").write_text(json.dumps(module.arch, indent=1))
    torch.save(state, tmp / "weights.pt")
    if directory.exists():
        old = directory.with_name(f".old-{directory.name}-{os.getpid()}")
        directory.rename(old)
        tmp.rename(directory)
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(directory)


def data_shape(net: nn.Module) -> tuple[int, ...]:
    """Shape of one sample: ``(C, H, W)`` for image networks, ``(d,)`` for vector ones (MLP, analytic)."""
    res = int(getattr(net, "img_resolution", 0) or 0)
    if res > 0:
        return (int(net.img_channels), res, res)
    if hasattr(net, "dim"):
        return (int(net.dim),)
    if hasattr(net, "arch") and "dim" in net.arch:
        return (int(net.arch["dim"]),)
    raise ConfigError("cannot tell the data shape of the networks (no img_resolution / dim)")


class PixelHead(nn.Module):
    """``discriminator.kind = "conv"``: a small separate discriminator on the noisy images themselves, patch logits
    from ``x_t`` and ``c_noise`` (images) or an MLP (vectors). (Not :class:`fastui.networks.discriminator.ConvHead`,
    which reads the fake score's bottleneck features.)

    Images: ``depth`` 3x3 stride-2 convolutions of ``channels`` (SiLU), then a 1x1 convolution to one logit per patch
    (depth 2: 7x7-pixel receptive fields, an 8x8 grid of patches at 32x32; depth 4: 31x31, 2x2). Vectors: ``depth``
    hidden layers of width ``channels``.
    """

    def __init__(self, shape: tuple[int, ...], channels: int = 64, depth: int = 2):
        super().__init__()
        self.image = len(shape) == 3
        layers: list[nn.Module] = []
        width = shape[0] + 1  # + the c_noise plane / entry
        for _ in range(depth):
            layers += [nn.Conv2d(width, channels, 3, stride=2, padding=1) if self.image else nn.Linear(width, channels),
                       nn.SiLU()]
            width = channels
        layers.append(nn.Conv2d(width, 1, 1) if self.image else nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x, sigma):
        """Logits ``[B, patches]`` (fp32)."""
        c_noise = sigma.float().clamp_min(1e-20).log() / 4
        x_in = x.float() / (sigma.float().reshape(-1, *([1] * (x.ndim - 1))) ** 2 + 0.25).sqrt()
        if self.image:
            extra = c_noise.reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        else:
            x_in = x_in.reshape(x.shape[0], -1)
            extra = c_noise.reshape(-1, 1)
        w = next(self.net.parameters())
        return self.net(torch.cat([x_in, extra], 1).to(w.dtype)).float().flatten(1)


class FakeScoreWithDisc(nn.Module):
    """The fake score ``D_psi`` and its discriminator head, one module for one engine.

    ``forward(x, sigma, labels, mode)``: ``"denoise"`` -> ``D_psi(x)``; ``"logits"`` -> discriminator patch logits
    ``[B, P]``; ``"train"`` -> denoiser output and the logits of the fake and real batches from one call.
    """

    def __init__(self, fake: nn.Module, kind: str = "shared", shape: tuple[int, ...] = (), channels: int = 64,
                 depth: int = 2):
        super().__init__()
        self.fake = fake
        self.kind = kind
        self.head = PixelHead(shape, channels, depth) if kind == "conv" else None

    def logits(self, x, sigma, labels=None):
        """Per-patch logits ``[B, P]`` (fp32): channel mean of the fake-score bottleneck, or the conv head."""
        if self.head is not None:
            return self.head(x, sigma)
        return self.fake.encode(x, sigma, labels).float().mean(dim=1).flatten(1)

    def forward(self, x, sigma, labels=None, mode: str = "denoise", real=None, real_labels=None):
        """``denoise``: ``D_psi(x)``; ``logits``: patch logits of ``x``; ``train``: ``(D_psi(x), logits(x),
        logits(real))`` in one call (one forward per backward, as DDP and ZeRO expect)."""
        if mode == "denoise":
            return self.fake(x, sigma, labels)
        if mode == "logits":
            return self.logits(x, sigma, labels)
        if mode == "train":
            d = self.fake(x, sigma, labels)
            if real is None:
                return d, None, None
            both = self.logits(torch.cat([x, real]), torch.cat([sigma, sigma]),
                               None if labels is None else torch.cat([labels, real_labels]))
            return d, both[: x.shape[0]], both[x.shape[0]:]
        raise ValueError(f"mode must be denoise, logits or train, got {mode!r}")


def build_networks(cfg: Config, device, *, dry_run: bool = False, needs_disc: bool = True):
    """Teacher, generator, fake score (+ head) on ``device``; G and the fake score copy the teacher's weights.

    Returns:
        ``(teacher, generator, fake_with_disc)``; the teacher's parameters have ``requires_grad = False``.
    """
    spec, arch = cfg.teacher.spec, cfg.teacher.arch
    # --dry-run: tiny stand-ins of the same structure; analytic teachers are tiny already
    if dry_run and (spec == "random" or (arch and not teacher_is_analytic(spec))):
        spec, arch = "random", tiny(arch)
    teacher = load_teacher(spec, arch, device, cfg.run.seed)
    if any(True for _ in teacher.parameters()):
        generator = copy.deepcopy(teacher)
        fake = copy.deepcopy(teacher)
    else:
        if not cfg.model.arch:
            raise ConfigError(f"teacher {cfg.teacher.spec!r} has no parameters: set [model.arch] (e.g. the MLP "
                              "{model = \"MLP\", dim = 2, hidden = 128, layers = 3}) for the generator and fake score")
        model_arch = tiny(cfg.model.arch) if dry_run else cfg.model.arch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.run.seed + 1)
            generator = build_network(model_arch).to(device)
        if cfg.model.pretrain_steps and not dry_run:
            pretrain_on_teacher(generator, teacher, cfg, device)
        fake = copy.deepcopy(generator)
    for net in (generator, fake):
        for p in net.parameters():
            p.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed + 2)
        # No separate head when nothing uses the discriminator: unused parameters would stall DDP.
        kind = cfg.discriminator.kind if needs_disc else "shared"
        fake_disc = FakeScoreWithDisc(fake, kind, data_shape(generator),
                                      cfg.discriminator.channels, cfg.discriminator.depth).to(device)
    for name, net in (("teacher", teacher), ("fake", fake), ("generator", generator)):
        if name in cfg.model.activation_checkpointing and hasattr(net, "set_checkpointing"):
            net.set_checkpointing(True)
    return teacher, generator.train(), fake_disc.train()


def pretrain_on_teacher(net: nn.Module, teacher: nn.Module, cfg: Config, device) -> None:
    """Fit ``net`` to an analytic teacher by denoising score matching (MATH §3 on teacher samples), so that the
    generator and fake score start "from the teacher" as they do with network teachers. Same draws on every rank."""
    from .. import fake_score_loss
    from .schedule import sample_sigma

    g = torch.Generator(device=device).manual_seed(cfg.run.seed + 3)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr_fake, betas=(float(cfg.optim.beta1),
                                                                          float(cfg.optim.beta2)))
    n = cfg.model.pretrain_batch
    for _ in range(cfg.model.pretrain_steps):
        x0 = teacher.sample(n, generator=g).to(device)
        sigma = sample_sigma("lognormal", n, g, device, p_mean=cfg.loss.p_mean, p_std=cfg.loss.p_std)
        x_t = x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * torch.randn(x0.shape, generator=g, device=device)
        loss = fake_score_loss(net(x_t, sigma), x0, sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.zero_grad(set_to_none=True)  # no stale gradient may reach the engines' first step


def teacher_is_analytic(spec: str) -> bool:
    """``gmm:...`` / ``gaussian:...`` specs."""
    return spec.split(":", 1)[0] in ("gmm", "gaussian")
