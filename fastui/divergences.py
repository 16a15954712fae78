"""Divergence registry and method presets (MATH.md §4 and §6).

A divergence is defined by ``h(r) = f''(r) r^2`` alone; everything the generator loss needs follows:

    g(r)  = h(r) - r h'(r)
    g'(r) = -r h''(r)

Built-in entries give ``h'`` and ``h''`` in closed form (cheap, ``torch.compile`` friendly); a user entry may give
only ``h`` and the derivatives come from autograd. Adding a divergence is one :func:`register` call and never touches
a kernel: kernels receive per-sample coefficient vectors computed here.

Example:
    >>> import torch, fastui.divergences as D
    >>> D.get("fkl").coefficients(torch.tensor([2.0]))["g"]
    tensor([0.])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    "PRESETS",
    "Divergence",
    "Preset",
    "alpha",
    "get",
    "get_preset",
    "names",
    "preset_names",
    "register",
]


@dataclass(frozen=True)
class Divergence:
    """One f-divergence ``D_f(p || q) = E_q[f(p/q)]`` expressed through ``h(r) = f''(r) r^2``.

    Args:
        name: registry key.
        h: elementwise ``h(r)``.
        dh: elementwise ``h'(r)``; ``None`` means autograd.
        d2h: elementwise ``h''(r)``; ``None`` means autograd.
        f: the generator function ``f(r)`` (documentation and tests: ``h = f'' r^2``), optional.
        doc: one line for ``fastui env`` and error messages.
    """

    name: str
    h: Fn
    dh: Fn | None = None
    d2h: Fn | None = None
    f: Fn | None = None
    doc: str = ""

    def coefficients(self, r: torch.Tensor) -> dict[str, torch.Tensor]:
        """``h, h', g, g'`` at ``r`` (any shape, detached, same dtype as ``r``).

        Returns:
            dict with keys ``h``, ``dh``, ``g``, ``dg``.
        """
        r = r.detach()
        if self.dh is not None and self.d2h is not None:
            h, dh, d2h = self.h(r), self.dh(r), self.d2h(r)
        else:
            h, dh, d2h = _autograd_derivatives(self.h, r)
        h, dh, d2h = (_broadcast(t, r) for t in (h, dh, d2h))
        return {"h": h, "dh": dh, "g": h - r * dh, "dg": -r * d2h}


def _broadcast(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Constant entries (``h = 1``) return python or 0-d values; give them ``r``'s shape and dtype."""
    return torch.as_tensor(t, dtype=like.dtype, device=like.device).expand_as(like).clone()


def _autograd_derivatives(h: Fn, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``h, h', h''`` of an elementwise ``h`` by double backward (in float64 for accuracy)."""
    with torch.enable_grad():
        x = r.to(torch.float64).requires_grad_(True)
        hx = h(x)
        hx = hx if torch.is_tensor(hx) else _broadcast(hx, x)
        if not hx.requires_grad:  # constant h
            zero = torch.zeros_like(x)
            return hx.detach().to(r.dtype), zero.to(r.dtype), zero.to(r.dtype)
        (dhx,) = torch.autograd.grad(hx.sum(), x, create_graph=True)
        if dhx.requires_grad:
            (d2hx,) = torch.autograd.grad(dhx.sum(), x, allow_unused=True)
            d2hx = torch.zeros_like(x) if d2hx is None else d2hx
        else:
            d2hx = torch.zeros_like(x)
    return hx.detach().to(r.dtype), dhx.detach().to(r.dtype), d2hx.to(r.dtype)


_REGISTRY: dict[str, Divergence] = {}


def register(div: Divergence, *, overwrite: bool = False) -> Divergence:
    """Add a divergence to the registry (tests pick every entry up automatically)."""
    if not overwrite and div.name in _REGISTRY:
        raise ValueError(f"divergence {div.name!r} is already registered")
    _REGISTRY[div.name] = div
    return div


def names() -> list[str]:
    """Registered divergence names (the parametric family appears as ``alpha``)."""
    return sorted(_REGISTRY) + ["alpha"]


def get(name: str | Divergence, **params: float) -> Divergence:
    """Look up a divergence by name.

    ``"alpha"`` takes a parameter ``a`` (``get("alpha", a=0.5)``); the spelling ``"alpha:0.5"`` is accepted too,
    so configs can carry it as one string.

    Raises:
        ValueError: unknown name (the message lists the known names) or a bad parameter.
    """
    if isinstance(name, Divergence):
        return name
    if not isinstance(name, str):
        raise ValueError(f"divergence must be a name (str), got {type(name).__name__}")  # noqa: TRY004 (API: ValueError)
    key = name.strip().lower()
    if key.startswith("alpha"):
        rest = key[len("alpha") :]
        if rest.startswith((":", "=")):
            try:
                params = {"a": float(rest[1:])}
            except ValueError:
                raise ValueError(f"bad alpha parameter in {name!r}; write e.g. 'alpha:0.5'") from None
        elif rest:
            raise ValueError(f"unknown divergence {name!r}; known: {', '.join(names())}")
        unknown = set(params) - {"a"}
        if unknown:
            raise ValueError(f"alpha divergence takes only the parameter 'a', got {sorted(unknown)}")
        return alpha(params.get("a", 0.5))
    if params:
        raise ValueError(f"divergence {name!r} takes no parameters, got {sorted(params)}")
    try:
        return _REGISTRY[key]
    except KeyError:
        raise ValueError(f"unknown divergence {name!r}; known: {', '.join(names())}") from None


def alpha(a: float) -> Divergence:
    """The alpha family ``f''(r) = r^(a-2)``, so ``h = r^a``: a=0 is rkl, a=1 is fkl, a=2 is pearson/2."""
    a = float(a)
    if not math.isfinite(a):
        raise ValueError(f"alpha parameter must be finite, got {a}")
    return Divergence(
        name=f"alpha:{a:g}",
        h=lambda r: r.pow(a),
        dh=lambda r: a * r.pow(a - 1.0),
        d2h=lambda r: a * (a - 1.0) * r.pow(a - 2.0),
        f=_alpha_f(a),
        doc=f"alpha family, a={a:g}: h = r^a",
    )


def _alpha_f(a: float) -> Fn:
    """An f with f'' = r^(a-2) (up to affine terms, which change neither h nor the divergence's gradient)."""
    if a == 0.0:
        return lambda r: -torch.log(r)
    if a == 1.0:
        return lambda r: r * torch.log(r)
    return lambda r: r.pow(a) / (a * (a - 1.0))


def _one(r: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(r)


def _zero(r: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(r)


for _div in (
    Divergence("rkl", h=_one, dh=_zero, d2h=_zero, f=lambda r: -torch.log(r), doc="reverse KL, KL(q||p): SiD/SIM"),
    Divergence("fkl", h=lambda r: r, dh=_one, d2h=_zero, f=lambda r: r * torch.log(r), doc="forward KL, KL(p||q)"),
    Divergence(
        "jeffreys", h=lambda r: 1 + r, dh=_one, d2h=_zero, f=lambda r: (r - 1) * torch.log(r), doc="KL(p||q)+KL(q||p)"
    ),
    Divergence(
        "js",
        h=lambda r: r / (1 + r),
        dh=lambda r: (1 + r).pow(-2),
        d2h=lambda r: -2 * (1 + r).pow(-3),
        f=lambda r: r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2),
        doc="Jensen-Shannon",
    ),
    Divergence(
        "pearson", h=lambda r: 2 * r * r, dh=lambda r: 4 * r, d2h=lambda r: 4 * torch.ones_like(r),
        f=lambda r: (r - 1) ** 2, doc="Pearson chi^2",
    ),
    Divergence(
        "neyman", h=lambda r: 2 / r, dh=lambda r: -2 / (r * r), d2h=lambda r: 4 / (r * r * r),
        f=lambda r: (1 - r) ** 2 / r, doc="Neyman chi^2",
    ),
    Divergence(
        "hellinger",
        h=lambda r: torch.sqrt(r) / 2,
        dh=lambda r: 0.25 * r.rsqrt(),
        d2h=lambda r: -0.125 * r.pow(-1.5),
        f=lambda r: (torch.sqrt(r) - 1) ** 2,
        doc="squared Hellinger",
    ),
    Divergence(
        "softened_rkl",
        h=lambda r: 1 / (1 + r),
        dh=lambda r: -(1 + r).pow(-2),
        d2h=lambda r: 2 * (1 + r).pow(-3),
        f=lambda r: (r + 1) * torch.log((r + 1) / (2 * r)),
        doc="softened reverse KL",
    ),
):
    register(_div)


# --------------------------------------------------------------------------------------------------------------------
# Presets of earlier methods (MATH §6, §7). Data, validated when a config is parsed.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A published method as a special case of the unified loss.

    Args:
        name: registry key (``method`` in configs).
        form: which generator-loss form of :mod:`fastui.functional` it uses: ``"uni"`` (MATH §5), ``"sid"``
            (``(S + (1-alpha) F) / w_f``), ``"di"``, ``"dmd"`` or ``"fdistill"``.
        alpha: SiD's alpha (``form == "sid"``).
        divergence: default divergence (``uni``, ``fdistill``); ``None`` if the form has none.
        needs_ratio: whether the density ratio (discriminator) is needed by the generator loss.
        gan: whether the GAN generator term is on by default.
        gan_weight: weight of the GAN term relative to the distillation loss (``sida`` mixes 0.5/0.5).
        k_fake: fake-score (+discriminator) steps per generator step.
        sigma_g: noise schedule of the generator loss: ``"karras"`` (u <= t_max/1000), ``"karras_index"``
            (uniform index 20..980 of 1000 Karras levels) or ``"lognormal"``.
        ratio_clip: ``(r_min, r_max)`` applied to the ratio, or ``None``.
        normalize_h: divide ``h(r)`` by its batch mean (f-distill).
        doc: one line.
    """

    name: str
    form: str
    alpha: float = 1.0
    divergence: str | None = None
    needs_ratio: bool = False
    gan: bool = False
    gan_weight: float = 0.0
    k_fake: int = 1
    sigma_g: str = "karras"
    ratio_clip: tuple[float, float] | None = None
    normalize_h: bool = False
    doc: str = ""
    distill_weight: float = 1.0
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("di", form="di", sigma_g="lognormal", doc="Diff-Instruct: integral KL, denoisers detached"),
        Preset("dmd", form="dmd", sigma_g="karras_index", doc="DMD distribution matching gradient"),
        Preset("dmd2", form="dmd", sigma_g="karras_index", gan=True, gan_weight=1.0, k_fake=5, doc="DMD2: DMD + GAN"),
        Preset("sid", form="sid", alpha=1.2, doc="Score identity Distillation, alpha = 1.2"),
        Preset("sim", form="sid", alpha=1.0, doc="Score Implicit Matching (SiD with alpha = 1)"),
        Preset(
            "sida", form="sid", alpha=1.0, gan=True, gan_weight=0.5, distill_weight=0.5,
            doc="SiDA: 0.5 SiD(alpha=1) + 0.5 GAN",
        ),
        Preset(
            "fdistill", form="fdistill", divergence="js", needs_ratio=True, gan=True, gan_weight=1.0, k_fake=5,
            sigma_g="karras_index", ratio_clip=(0.1, 20.0), normalize_h=True,
            doc="f-distill: h(r)-weighted DMD gradient, ratio clipped to [0.1, 20]",
        ),
        Preset(
            "uni", form="uni", divergence="fkl", needs_ratio=True, gan=True, gan_weight=1.0,
            doc="Uni-Instruct expanded f-divergence (MATH §5)",
        ),
    )
}


def preset_names() -> list[str]:
    """Names of the method presets."""
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    """Look up a method preset; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return PRESETS[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(preset_names())}") from None
