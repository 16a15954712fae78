"""Typed training configuration: TOML files in ``configs/``, ``--section.key=value`` overrides, validation.

Every field has a default and one line of documentation (the comment after it, shown by ``--help-config``).
Parsing never touches the file system except to read the TOML and to check that named inputs exist; any error is a
:class:`ConfigError` with one message naming the key and listing the valid choices. ``fastui.train`` turns it into
exit code 2 before anything is written.

Example:
    >>> from fastui.train.config import load_config
    >>> cfg = load_config("configs/toy_ring8.toml", ["--loss.divergence=jeffreys"])
    >>> cfg.loss.divergence
    'jeffreys'
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from .. import divergences as _div

__all__ = ["Config", "ConfigError", "Resolved", "describe", "load_config", "parse_overrides", "resolve", "to_dict"]


class ConfigError(ValueError):
    """A configuration problem: unknown key, bad value, missing file, contradiction. Exit code 2."""


@dataclass
class RunConfig:
    out_dir: str = "runs"  # parent directory of run directories
    name: str = ""  # run directory name under out_dir ("" = <config stem>-<method>-<divergence>)
    seed: int = 0  # base seed of every random draw (noise, labels, parameters of random networks)
    duration_images: int = 200_000_000  # training length in generated images (iterations x global batch)
    max_minutes: float = 0.0  # wall-clock budget: stop, checkpoint and export after this many minutes (0 = none)
    log_every: int = 50  # iterations between host syncs: progress bar, CSV, TensorBoard
    grid_every_images: int = 500_000  # images between sample grids of the EMA generator (0 = never)
    grid_size: int = 64  # samples in a grid (fixed z and labels)
    ckpt_every_images: int = 500_000  # images between checkpoints (0 = only at the end)
    keep_last: int = 3  # checkpoints kept (older complete ones are deleted)
    snapshot_every_images: int = 0  # images between exports of the EMA generator to snapshots/<images>/ (0 = never)
    tensorboard: bool = True  # write TensorBoard scalars next to the CSV
    progress: bool = True  # tqdm progress bar on rank 0


@dataclass
class TeacherConfig:
    spec: str = ""  # fastui checkpoint dir, converted EDM checkpoint, "demo", "gmm:ring8", "gaussian:...", "random"
    arch: dict = field(default_factory=dict)  # arch of "random" teachers and of --dry-run stand-ins (contract 2)


@dataclass
class ModelConfig:
    arch: dict = field(default_factory=dict)  # arch of G and fake score when the teacher has no parameters
    sigma_init: float = 2.5  # x_g = G(sigma_init z; sigma_init, c)
    pretrain_steps: int = 0  # analytic teachers: DSM steps fitting model.arch to teacher samples before distilling
    pretrain_batch: int = 256  # batch of those DSM steps
    activation_checkpointing: list = field(default_factory=list)  # networks to checkpoint: teacher, fake, generator
    compile: bool = False  # torch.compile the three networks
    compile_mode: str = "default"  # torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, ...
    channels_last: bool = False  # channels_last memory format for image networks
    teacher_bf16: bool = True  # bf16 autocast on the torch backend: keep the frozen teacher's weights in bf16


@dataclass
class LossConfig:
    method: str = "uni"  # preset of fastui.divergences.PRESETS: di, dmd, dmd2, sid, sim, sida, fdistill, uni
    divergence: str = ""  # registry name for uni/fdistill ("" = the preset's); e.g. fkl, jeffreys, alpha:0.5
    lambda_g: float = 100.0  # scale of the SiD-family losses (MATH §5)
    alpha: float = -1.0  # SiD alpha (-1 = the preset's)
    gan: str = "auto"  # GAN generator term: auto (the preset's), on, off
    gan_weight: float = -1.0  # weight of the GAN term relative to the distillation loss (-1 = preset's)
    lambda_gan: float = 0.01  # GAN scale (SiDA: 0.01 against lambda_g = 100, per sample d / w_f)
    ratio: str = "auto"  # density-ratio weighting in the generator loss: auto (preset), on, off
    log_ratio_clamp: float = 10.0  # |log r| clamp before exp (MATH §3)
    ratio_clip: list = field(default_factory=list)  # [r_min, r_max] ([] = the preset's or none)
    self_normalize: bool = False  # divide r by its all-reduced batch mean
    c_clip: float = 0.0  # clip of |w c| in the uni loss (0 = none)
    sigma_g: str = "auto"  # generator-loss noise: auto (preset), karras, karras_index, lognormal
    t_max: float = 800.0  # karras: u ~ U[0, t_max/1000]
    sigma_min: float = 0.002  # smallest noise level
    sigma_max: float = 80.0  # largest noise level
    rho: float = 7.0  # Karras rho
    p_mean: float = -1.2  # log-normal mean (fake score, discriminator, lognormal G)
    p_std: float = 1.2  # log-normal std
    backend: str = "auto"  # fused loss backend: auto, torch, cpp, triton, cuda (sets FASTUI_BACKEND)


@dataclass
class ScheduleConfig:
    k_fake: int = 0  # fake-score(+discriminator) steps per generator step (0 = the preset's)
    warmup_images: int = 100_000  # no generator step before this many images
    ratio_start_images: int = 200_000  # GAN and ratio-weighted branches on after this many images
    # (measured in the demo on the CPU: 9% fewer FLOPs, 4% faster iterations, a worse FID at equal iterations; README)
    share_samples: bool = False  # fake step on the generator step's samples: one G forward fewer (k_fake 1, 1 micro)


@dataclass
class OptimConfig:
    lr_g: float = 1e-5  # generator learning rate
    lr_fake: float = 1e-5  # fake score (+discriminator) learning rate
    beta1: float = 0.0  # Adam beta1 (0 in the published recipes)
    beta2: float = 0.999  # Adam beta2
    eps: float = 0.0  # Adam eps (0 = 1e-8 in fp32, 1e-6 in reduced precision)
    fake_grad_clip: float = 1.0  # value clip of fake-score gradients when the GAN is on (0 = none)
    fused: bool = True  # torch's fused Adam where supported (CUDA, CPU)
    impl: str = "torch"  # Adam implementation: torch, apex (FusedAdam, CUDA), deepspeed (FusedAdam / DeepSpeedCPUAdam)
    lr_decay_start: float = 1.0  # half-cosine decay of every rate from this fraction of run.duration_images (1 = none)
    lr_decay_final: float = 1.0  # the rates' multiplier at the end of the budget (1 = no decay)


@dataclass
class EmaConfig:
    halflife_images: float = 500_000.0  # EMA half-life of the generator in images
    rampup: float = 0.05  # half-life <= rampup x images so far (0 = no ramp-up)


@dataclass
class BatchConfig:
    global_size: int = 256  # images per optimizer step over all ranks (micro x grad_accum x world)
    micro: int = 32  # images per rank per forward
    grad_accum: int = 0  # micro-steps per optimizer step (0 = global_size / (micro x world))
    labels: str = "uniform"  # class labels for G: uniform, data (from the data stream)
    noise: str = "per_rank"  # per_rank (each rank draws its rows) or global (world-size invariant draws)


@dataclass
class DataConfig:
    source: str = ""  # shard directory / manifest; "synthetic"; "" = teacher samples (analytic) or none
    shuffle_buffer: int = 1000  # ShardLoader shuffle buffer
    num_workers: int = 0  # ShardLoader workers
    resume_position: bool = True  # on resume, continue the checkpoint's data position (false: the stream starts over)


@dataclass
class DiscriminatorConfig:
    kind: str = "shared"  # shared (fake-score encoder, channel mean) or conv (small separate head)
    channels: int = 64  # width of the conv head
    depth: int = 2  # stride-2 convolutions of the conv head (2: 7x7-pixel patches; 4: 31x31; MLP: hidden layers)
    weight: float = 1.0  # weight of L_disc in the fake-score step (1 = the published recipes; see README "demo")
    lr: float = 0.0  # learning rate of the conv head, its own Adam group in the fake engine (0 = optim.lr_fake)
    refresh_every_images: int = 0  # a fresh conv head every this many images, pre-trained alone (0 = never)
    refresh_start_images: int = 0  # no refresh before this many images
    refresh_steps: int = 1500  # Adam steps of a fresh head alone: real images vs the generator's samples
    refresh_lr: float = 3e-4  # learning rate of those steps (Adam betas 0, 0.999)
    refresh_batch: int = 64  # real and generated images per step of those
    refresh_pool: int = 4096  # real images and generator samples drawn for a refresh (all ranks together)


@dataclass
class EngineConfig:
    backend: str = "deepspeed"  # deepspeed or torch (DDP when world > 1)
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    precision: str = "fp32"  # fp32, bf16, fp16 (fp16: GPU only, dynamic loss scaling)
    autocast_bf16: bool = False  # run forwards under bf16 autocast with fp32 parameters (loss maths stays fp32)
    deepspeed_config: str = ""  # optional DeepSpeed JSON merged in (batch sizes must agree)
    device: str = "auto"  # auto (cuda if available), cpu, cuda
    cpu_threads: int = 0  # torch threads per rank on the CPU (0 = OMP_NUM_THREADS, else cores / local ranks)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


CHOICES = {
    ("loss", "gan"): ("auto", "on", "off"),
    ("loss", "ratio"): ("auto", "on", "off"),
    ("loss", "sigma_g"): ("auto", "karras", "karras_index", "lognormal"),
    ("loss", "backend"): ("auto", "torch", "cpp", "triton", "cuda"),
    ("batch", "labels"): ("uniform", "data"),
    ("batch", "noise"): ("per_rank", "global"),
    ("discriminator", "kind"): ("shared", "conv"),
    ("engine", "backend"): ("deepspeed", "torch"),
    ("engine", "zero_stage"): (0, 1, 2, 3),
    ("engine", "precision"): ("fp32", "bf16", "fp16"),
    ("engine", "device"): ("auto", "cpu", "cuda"),
    ("model", "compile_mode"): ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}
CHECKPOINTABLE = ("teacher", "fake", "generator")


def _sections() -> dict[str, type]:
    return {f.name: f.type if isinstance(f.type, type) else globals()[f.type] for f in fields(Config)}


def describe() -> str:
    """Every section and key with its default and documentation (for ``--help-config`` and the README)."""
    import inspect

    lines = []
    for sec, cls in _sections().items():
        lines.append(f"[{sec}]")
        src = inspect.getsource(cls).splitlines()
        for f in fields(cls):
            doc = next((s.split("#", 1)[1].strip() for s in src if s.strip().startswith(f.name + ":") and "#" in s), "")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            lines.append(f"  {f.name} = {json.dumps(default)}  # {doc}")
    return "\n".join(lines)


def _coerce(sec: str, key: str, ftype: str, value: Any, *, from_cli: bool) -> Any:
    """Convert ``value`` to the field's type; CLI values arrive as strings and may be TOML/JSON literals."""
    where = f"{sec}.{key}"
    if from_cli and isinstance(value, str) and ftype in ("int", "float", "bool", "list", "dict"):
        try:
            value = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            if ftype == "bool" and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                value = value.lower() in ("true", "1", "yes", "on")
            else:
                raise ConfigError(f"{where}: cannot parse {value!r} as {ftype}") from None
    if ftype == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if ftype == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if ftype == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if ftype == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if ftype == "list":
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return value
    if ftype == "dict":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return value
    raise AssertionError(ftype)  # every field type is one of the above


def _set(cfg: Config, sec: str, key: str, value: Any, *, from_cli: bool) -> None:
    secs = _sections()
    if sec not in secs:
        raise ConfigError(f"unknown section [{sec}]; valid sections: {', '.join(secs)}")
    cls = secs[sec]
    names = {f.name: f for f in fields(cls)}
    if key not in names:
        raise ConfigError(f"unknown key {sec}.{key}; valid keys of [{sec}]: {', '.join(names)}")
    ftype = names[key].type if isinstance(names[key].type, str) else names[key].type.__name__
    setattr(getattr(cfg, sec), key, _coerce(sec, key, ftype, value, from_cli=from_cli))


def parse_overrides(args: list[str]) -> list[tuple[str, str, str]]:
    """``["--loss.divergence=fkl", "--run.seed", "3"]`` -> ``[("loss", "divergence", "fkl"), ("run", "seed", "3")]``.

    Raises:
        ConfigError: an argument that is not ``--section.key=value`` / ``--section.key value``.
    """
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or "." not in a.split("=", 1)[0]:
            raise ConfigError(f"unrecognised argument {a!r}; overrides are written --section.key=value")
        name, eq, value = a[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"override {a} has no value; write {a}=VALUE")
            value, i = args[i + 1], i + 1
        sec, _, key = name.partition(".")
        out.append((sec, key, value))
        i += 1
    return out


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Read a TOML config, apply ``--section.key=value`` overrides and validate (no file is written).

    Raises:
        ConfigError: unreadable file, unknown section/key, bad value (message lists the valid choices).
    """
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: invalid TOML: {e}") from None
        for sec, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{p}: top-level key {sec!r} must be a [section]; valid: {', '.join(_sections())}")
            for key, value in table.items():
                _set(cfg, sec, key, value, from_cli=False)
    for sec, key, value in parse_overrides(list(overrides or [])):
        _set(cfg, sec, key, value, from_cli=True)
    validate(cfg)
    if cfg.engine.deepspeed_config and path is not None:
        cfg.engine.deepspeed_config = _find_relative(cfg.engine.deepspeed_config, Path(path))
    return cfg


def _find_relative(name: str, config_path: Path) -> str:
    """A relative path as given if it exists from the working directory, else next to or above the config file
    (presets name ``configs/deepspeed_8gpu.json`` relative to the repository root)."""
    p = Path(name)
    if p.is_absolute() or p.exists():
        return name
    for base in (config_path.parent, config_path.parent.parent):
        if (base / p).exists():
            return str(base / p)
    return name


def validate(cfg: Config) -> None:
    """Value checks independent of the machine (choices, ranges, registry names)."""
    for (sec, key), choices in CHOICES.items():
        v = getattr(getattr(cfg, sec), key)
        if v not in choices:
            raise ConfigError(f"{sec}.{key} = {v!r} is not valid; choose one of: {', '.join(map(str, choices))}")
    try:
        preset = _div.get_preset(cfg.loss.method)
    except ValueError as e:
        raise ConfigError(f"loss.method: {e}") from None
    if cfg.loss.divergence:
        try:
            _div.get(cfg.loss.divergence)
        except ValueError as e:
            raise ConfigError(f"loss.divergence: {e}") from None
        if preset.form not in ("uni", "fdistill"):
            raise ConfigError(f"loss.divergence is only used by methods uni and fdistill, not {preset.name!r}")
    for sec, key in (("run", "duration_images"), ("run", "log_every"), ("batch", "global_size"), ("batch", "micro"),
                     ("run", "keep_last")):
        if getattr(getattr(cfg, sec), key) < 1:
            raise ConfigError(f"{sec}.{key} must be >= 1, got {getattr(getattr(cfg, sec), key)}")
    for sec, key in (("run", "grid_every_images"), ("run", "ckpt_every_images"), ("batch", "grad_accum"),
                     ("schedule", "k_fake"), ("schedule", "warmup_images"), ("schedule", "ratio_start_images"),
                     ("run", "grid_size"), ("run", "max_minutes"), ("run", "snapshot_every_images")):
        if getattr(getattr(cfg, sec), key) < 0:
            raise ConfigError(f"{sec}.{key} must be >= 0, got {getattr(getattr(cfg, sec), key)}")
    if cfg.optim.impl not in ("torch", "apex", "deepspeed"):
        raise ConfigError(f"optim.impl must be torch, apex or deepspeed, got {cfg.optim.impl!r}")
    for key in ("lr_g", "lr_fake"):
        if getattr(cfg.optim, key) <= 0:
            raise ConfigError(f"optim.{key} must be > 0")
    if not 0.0 <= cfg.optim.lr_decay_start <= 1.0:
        raise ConfigError(f"optim.lr_decay_start must be in [0, 1] (a fraction of the budget), got "
                          f"{cfg.optim.lr_decay_start}")
    if not 0.0 < cfg.optim.lr_decay_final <= 1.0:
        raise ConfigError(f"optim.lr_decay_final must be in (0, 1], got {cfg.optim.lr_decay_final}")
    if not (0.0 <= cfg.optim.beta1 < 1.0 and 0.0 <= cfg.optim.beta2 < 1.0):
        raise ConfigError("optim.beta1 and optim.beta2 must be in [0, 1)")
    if not 0 < cfg.loss.sigma_min < cfg.loss.sigma_max:
        raise ConfigError("loss.sigma_min must be > 0 and < loss.sigma_max")
    if not 0 < cfg.loss.t_max <= 1000:
        raise ConfigError(f"loss.t_max must be in (0, 1000], got {cfg.loss.t_max}")
    clip = cfg.loss.ratio_clip
    if clip and (len(clip) != 2 or not 0 < clip[0] < clip[1]):
        raise ConfigError(f"loss.ratio_clip must be [] or [r_min, r_max] with 0 < r_min < r_max, got {clip}")
    bad = [n for n in cfg.model.activation_checkpointing if n not in CHECKPOINTABLE]
    if bad:
        raise ConfigError(f"model.activation_checkpointing: unknown network(s) {bad}; choose from {CHECKPOINTABLE}")
    if cfg.model.pretrain_steps < 0 or cfg.model.pretrain_batch < 1:
        raise ConfigError("model.pretrain_steps must be >= 0 and model.pretrain_batch >= 1")
    if cfg.model.sigma_init <= 0:
        raise ConfigError("model.sigma_init must be > 0")
    if not 1 <= cfg.discriminator.depth <= 8:
        raise ConfigError(f"discriminator.depth must be in 1..8, got {cfg.discriminator.depth}")
    if not cfg.discriminator.weight > 0:
        raise ConfigError(f"discriminator.weight must be > 0, got {cfg.discriminator.weight}")
    if cfg.discriminator.lr < 0:
        raise ConfigError(f"discriminator.lr must be >= 0 (0 = optim.lr_fake), got {cfg.discriminator.lr}")
    if cfg.discriminator.lr > 0 and cfg.discriminator.kind != "conv":
        raise ConfigError("discriminator.lr needs discriminator.kind = 'conv': the shared discriminator reads the fake "
                          "score's own features and has no parameters of its own")
    _check_refresh(cfg)
    if cfg.ema.halflife_images <= 0 or cfg.ema.rampup < 0:
        raise ConfigError("ema.halflife_images must be > 0 and ema.rampup >= 0")
    if cfg.engine.backend == "torch" and cfg.engine.zero_stage != 0:
        raise ConfigError("engine.zero_stage > 0 needs engine.backend = 'deepspeed' (the torch backend is DDP)")
    if cfg.engine.backend == "torch" and cfg.engine.precision == "fp16":
        raise ConfigError("engine.precision = 'fp16' needs engine.backend = 'deepspeed' (dynamic loss scaling); "
                          "the torch backend runs bf16 as autocast")
    if cfg.engine.precision == "fp16" and (cfg.engine.device == "cpu" or not _cuda_available()):
        raise ConfigError("engine.precision = 'fp16' needs a CUDA device; use bf16 or fp32 on the CPU")
    if cfg.model.channels_last and cfg.engine.backend == "deepspeed":
        raise ConfigError("model.channels_last needs engine.backend = 'torch' (DeepSpeed broadcasts parameters as "
                          "contiguous byte views)")
    if not cfg.teacher.spec:
        raise ConfigError("teacher.spec is empty; give a checkpoint directory, 'demo', 'gmm:ring8', ... or 'random'")
    if cfg.teacher.spec == "random" and not cfg.teacher.arch:
        raise ConfigError("teacher.spec = 'random' needs a [teacher.arch] table")


def _check_refresh(cfg: Config) -> None:
    """``discriminator.refresh_*``: values, and what a refresh needs (a conv head, the torch backend)."""
    d = cfg.discriminator
    for key in ("refresh_every_images", "refresh_start_images", "refresh_steps"):
        if getattr(d, key) < 0:
            raise ConfigError(f"discriminator.{key} must be >= 0, got {getattr(d, key)}")
    for key in ("refresh_lr", "refresh_batch", "refresh_pool"):
        if not getattr(d, key) > 0:
            raise ConfigError(f"discriminator.{key} must be > 0, got {getattr(d, key)}")
    if d.refresh_batch > d.refresh_pool:
        raise ConfigError(f"discriminator.refresh_batch ({d.refresh_batch}) must be <= discriminator.refresh_pool "
                          f"({d.refresh_pool})")
    if d.refresh_every_images == 0:
        return
    if d.kind != "conv":
        raise ConfigError("discriminator.refresh_every_images needs discriminator.kind = 'conv': the shared "
                          "discriminator is the fake score's own encoder, which a refresh would erase")
    if cfg.engine.backend != "torch":
        raise ConfigError("discriminator.refresh_every_images needs engine.backend = 'torch' (under DeepSpeed the "
                          "head's parameters and Adam state live in ZeRO's partitions)")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class Resolved:
    """Values derived from the config and the world size (what the engine actually runs).

    ``k_fake, sigma_g, gan, gan_weight, use_ratio, ratio_clip, alpha, divergence`` fill the config's
    ``auto``/``-1``/``""`` entries from the method preset; batch sizes satisfy ``global = micro x accum x world``.
    """

    preset: Any
    divergence: str
    alpha: float
    k_fake: int
    sigma_g: str
    gan: bool
    gan_weight: float
    use_ratio: bool
    ratio_clip: tuple | None
    needs_disc: bool
    world: int
    micro: int
    grad_accum: int
    global_size: int
    eps: float


def resolve(cfg: Config, world: int) -> Resolved:
    """Fill preset defaults and derive the batch split for ``world`` ranks.

    Raises:
        ConfigError: batch sizes that do not divide, fp16 requested without CUDA is checked by the engine.
    """
    p = _div.get_preset(cfg.loss.method)
    gan = {"auto": p.gan, "on": True, "off": False}[cfg.loss.gan]
    use_ratio = {"auto": p.needs_ratio, "on": True, "off": False}[cfg.loss.ratio]
    if use_ratio and p.form not in ("uni", "fdistill"):
        raise ConfigError(f"loss.ratio = on has no effect for method {p.name!r} (only uni and fdistill use r)")
    gan_weight = p.gan_weight if cfg.loss.gan_weight < 0 else cfg.loss.gan_weight
    if gan and gan_weight == 0:
        gan_weight = 1.0
    clip = tuple(cfg.loss.ratio_clip) if cfg.loss.ratio_clip else p.ratio_clip
    micro, accum, glob = cfg.batch.micro, cfg.batch.grad_accum, cfg.batch.global_size
    if accum == 0:
        if glob % (micro * world):
            raise ConfigError(f"batch.global_size = {glob} is not a multiple of batch.micro x world = "
                              f"{micro} x {world}")
        accum = glob // (micro * world)
    elif micro * accum * world != glob:
        raise ConfigError(f"batch.global_size = {glob} but batch.micro x batch.grad_accum x world = "
                          f"{micro} x {accum} x {world} = {micro * accum * world}")
    if cfg.discriminator.refresh_every_images and not (gan or use_ratio):
        raise ConfigError(f"discriminator.refresh_every_images: method {p.name!r} trains no discriminator here "
                          "(turn on loss.gan or loss.ratio)")
    k_fake = cfg.schedule.k_fake or p.k_fake
    if cfg.schedule.share_samples and (k_fake != 1 or accum != 1):
        raise ConfigError(f"schedule.share_samples needs one fake step and one micro-step per generator step (the "
                          f"generator's graph is held across the fake step); here k_fake = {k_fake} and "
                          f"grad_accum = {accum}")
    eps = cfg.optim.eps or (1e-8 if cfg.engine.precision == "fp32" and not cfg.engine.autocast_bf16 else 1e-6)
    return Resolved(
        preset=p, divergence=cfg.loss.divergence or (p.divergence or ""),
        alpha=p.alpha if cfg.loss.alpha < 0 else cfg.loss.alpha, k_fake=k_fake,
        sigma_g=p.sigma_g if cfg.loss.sigma_g == "auto" else cfg.loss.sigma_g, gan=gan, gan_weight=gan_weight,
        use_ratio=use_ratio, ratio_clip=clip, needs_disc=gan or use_ratio, world=world, micro=micro,
        grad_accum=accum, global_size=glob, eps=eps,
    )


def to_dict(cfg: Config) -> dict:
    """The config as plain data (written to the run directory as ``config.json``)."""
    return dataclasses.asdict(cfg)
