"""``fastui teacher``: train an EDM teacher (the demo teacher is made with it).

EDM training (Karras et al. 2022): ln sigma ~ N(P_mean, P_std^2), loss per image
``lambda(sigma) * sum_pix (D(y + sigma n; sigma, c) - y)^2`` with ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``,
Adam, linear learning-rate warm-up, EMA with a half-life in images and a ramp-up (half-life at most
``ema_rampup_ratio`` x images seen), optional class-label dropout.

Usage::

    python -m fastui.teacher_train --config configs/teacher_fmnist.toml --device cuda --minutes 4 --out runs/t
    fastui teacher --config configs/teacher_fmnist.toml --device cpu --minutes 1 --tiny --out /tmp/t

Run directory: ``config.json`` (resolved), ``training-state.pt`` (resumable: model, EMA, optimizer, step, RNG;
written atomically), ``grid-XXXXXXkimg.png`` sample grids, ``teacher/`` (the EMA network as a fastui checkpoint:
arch.json + weights.pt). An existing ``training-state.pt`` is resumed unless ``--fresh``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import tomllib
import torch

from fastui import networks


@dataclasses.dataclass
class ModelConfig:
    model_channels: int = 32  # base channel count
    channel_mult: list = dataclasses.field(default_factory=lambda: [1, 2, 2])  # per-resolution multipliers
    num_blocks: int = 2  # residual blocks per resolution
    attn_resolutions: list = dataclasses.field(default_factory=list)  # extra attention resolutions
    dropout: float = 0.0  # dropout in residual blocks
    label_dropout: float = 0.0  # class-label dropout
    cond: bool = True  # class-conditional
    img_resolution: int = 32  # image size after padding
    img_channels: int = 1  # colour channels


@dataclasses.dataclass
class DataConfig:
    source: str = "fashion-mnist"  # "fashion-mnist" or a shard directory
    root: str = ""  # Fashion-MNIST folder ("" = default)
    pad_to: int = 32  # zero-pad to this size
    xflip: bool = False  # random horizontal flips


@dataclasses.dataclass
class TrainConfig:
    batch: int = 512  # images per step
    lr: float = 1e-3  # Adam learning rate
    lr_warmup_kimg: float = 200.0  # warm-up length in thousands of images
    ema_halflife_kimg: float = 100.0  # EMA half-life (kimg)
    ema_rampup_ratio: float = 0.05  # ramp-up ratio (0 = off)
    total_kimg: float = 20000.0  # training length (kimg)
    P_mean: float = -1.2  # log-normal noise mean
    P_std: float = 1.2  # log-normal noise std
    sigma_data: float = 0.5  # data std
    grad_clip: float = 0.0  # gradient-norm clip (0 = off)
    bf16: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # channels_last on CUDA
    compile: bool = False  # torch.compile on CUDA
    seed: int = 0  # random seed


@dataclasses.dataclass
class LogConfig:
    log_every: int = 100  # steps between statistics
    ckpt_every_minutes: float = 2.0  # state checkpoint period
    grid_every_kimg: float = 1000.0  # sample-grid period
    grid_n: int = 100  # images per grid
    grid_steps: int = 18  # Heun steps for grids


@dataclasses.dataclass
class TeacherConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)


class ConfigError(ValueError):
    """Unknown key or bad value in the teacher config."""


def _coerce(value, default, where):
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(default, list):
        if isinstance(value, str):
            value = json.loads(value if value.strip().startswith("[") else f"[{value}]")
        return list(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return type(default)(value) if not (isinstance(default, int) and isinstance(value, float)) else value
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from err
    return str(value)


def load_config(path: str | None, overrides: list[str] = ()) -> TeacherConfig:
    """Parse the TOML config and ``section.key=value`` overrides into a checked ``TeacherConfig``."""
    cfg = TeacherConfig()
    raw = {}
    if path:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    for section, values in raw.items():
        if not hasattr(cfg, section):
            raise ConfigError(f"unknown config section [{section}]; valid: model, data, train, log")
        sub = getattr(cfg, section)
        valid = {f.name for f in dataclasses.fields(sub)}
        for name, value in values.items():
            if name not in valid:
                raise ConfigError(f"unknown key {section}.{name}; valid: {', '.join(sorted(valid))}")
            setattr(sub, name, _coerce(value, getattr(sub, name), f"{section}.{name}"))
    return cfg


def arch_from_config(cfg: TeacherConfig, tiny: bool = False) -> dict:
    """The ``fastui.networks`` architecture dict for the configured teacher (``tiny`` shrinks it for tests)."""
    m = cfg.model
    arch = networks.small_unet_arch(img_resolution=m.img_resolution, img_channels=m.img_channels,
                                    label_dim=10 if m.cond else 0, model_channels=m.model_channels,
                                    channel_mult=m.channel_mult, num_blocks=m.num_blocks,
                                    attn_resolutions=m.attn_resolutions, dropout=m.dropout)
    arch["kwargs"]["label_dropout"] = m.label_dropout
    arch["sigma_data"] = cfg.train.sigma_data
    return networks.tiny_arch(arch) if tiny else arch


def _pad(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad [N, H, W, C] uint8 images symmetrically to size x size (0 = black, i.e. -1 after scaling)."""
    h, w = images.shape[1:3]
    if h > size or w > size:
        raise ConfigError(f"data.pad_to={size} is smaller than the images ({h}x{w})")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))


def _read_idx_gz(path: Path) -> np.ndarray:
    """Minimal IDX reader (fallback when fastui.data is unavailable)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST train split as (uint8 [N, 28, 28, 1], int64 [N]), via fastui.data or a tiny fallback."""
    try:
        from fastui.data.importers import fashion_mnist
    except ImportError:
        fashion_mnist = None
    if fashion_mnist is not None:
        images, labels, _ = fashion_mnist(root or None, split="train")
        return images, labels
    base = Path(root or "/usr/share/datasets/fashion-mnist")
    images = _read_idx_gz(base / "train-images-idx3-ubyte.gz")[..., None]
    labels = _read_idx_gz(base / "train-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


class InMemoryBatches:
    """Random batches (with replacement) from a small uint8 dataset kept on the training device.

    Shapes: yields (images uint8 [B, C, H, W], labels int64 [B]). ``state_dict`` holds the generator state.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch: int, device, seed: int):
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.batch = batch
        self.gen = torch.Generator(device="cpu").manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self):
        idx = torch.randint(0, len(self.labels), (self.batch,), generator=self.gen).to(self.labels.device)
        return self.images[idx], self.labels[idx]

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.gen.set_state(state["gen"])


class ShardBatches:
    """Batches from a webdataset shard directory through ``fastui.data.loader.ShardLoader`` (contract 3)."""

    def __init__(self, source: str, batch: int, device, seed: int, pad_to: int):
        from fastui.data.loader import ShardLoader

        self.loader = ShardLoader(source, batch, seed=seed)
        self.it = iter(self.loader)
        self.device = device
        self.pad_to = pad_to

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.it)
        images = item["image"]
        h = images.shape[-1]
        if h < self.pad_to:
            p = (self.pad_to - h) // 2
            images = torch.nn.functional.pad(images, (p, self.pad_to - h - p, p, self.pad_to - h - p))
        return images.to(self.device), item["label"].to(self.device)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)
        self.it = iter(self.loader)


def make_batches(cfg: TeacherConfig, device, data_root: str | None):
    """The configured batch source (in-memory Fashion-MNIST or a shard directory)."""
    if cfg.data.source == "fashion-mnist":
        images, labels = load_fashion_mnist(data_root or cfg.data.root or None)
        return InMemoryBatches(_pad(images, cfg.data.pad_to), labels, cfg.train.batch, device, cfg.train.seed)
    if Path(cfg.data.source).exists():
        return ShardBatches(cfg.data.source, cfg.train.batch, device, cfg.train.seed, cfg.data.pad_to)
    raise ConfigError(f"data.source {cfg.data.source!r}: expected 'fashion-mnist' or an existing shard directory")


def edm_loss(net, images: torch.Tensor, labels, cfg: TrainConfig, autocast: bool) -> torch.Tensor:
    """EDM denoising loss, summed over pixels and averaged over the batch.

    Shapes: images float [B, C, H, W] in [-1, 1], labels int64 [B] or None -> scalar.
    """
    b = images.shape[0]
    sigma = (torch.randn(b, device=images.device) * cfg.P_std + cfg.P_mean).exp()
    weight = (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2
    noisy = images + torch.randn_like(images) * sigma.view(-1, 1, 1, 1)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
        denoised = net(noisy, sigma, labels)
    per_image = (denoised.float() - images).square().sum(dim=(1, 2, 3))
    return (weight * per_image).mean()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, nimg: int, batch: int, cfg: TrainConfig) -> None:
    """EMA with a half-life in images, ramped up to ``ema_rampup_ratio`` x images seen."""
    halflife = cfg.ema_halflife_kimg * 1000
    if cfg.ema_rampup_ratio > 0:
        halflife = min(halflife, nimg * cfg.ema_rampup_ratio)
    beta = 0.5 ** (batch / max(halflife, 1e-8))
    # One fused call instead of a kernel per parameter (matters on the GPU: ~150 small tensors).
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1 - beta)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state(device) -> dict:
    state = {"cpu": torch.get_rng_state(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["cpu"])
    np.random.set_state(state["numpy"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _sample_grid(ema, cfg: TeacherConfig, device, path: Path) -> None:
    from fastui.sample import heun_sample, save_png_grid

    n = cfg.log.grid_n
    gen = torch.Generator().manual_seed(1234)  # fixed latents: grids over time are comparable
    z = torch.randn((n, ema.img_channels, ema.img_resolution, ema.img_resolution), generator=gen).to(device)
    labels = (torch.arange(n) % ema.label_dim).to(device) if ema.label_dim else None
    images = heun_sample(ema, z, labels, num_steps=cfg.log.grid_steps)
    save_png_grid(images.clamp(-1, 1), path, nrow=ema.label_dim or None)


def _parse(argv):
    p = argparse.ArgumentParser(prog="fastui teacher", description="Train an EDM teacher.",
                                epilog="Config overrides: --section.key=value (e.g. --train.batch=256).")
    p.add_argument("--config", default=None, help="TOML config (configs/teacher_fmnist.toml)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget: stop, save and export after N min")
    p.add_argument("--data-root", default=None, help="folder with train-images-idx3-ubyte.gz etc.")
    p.add_argument("--tiny", action="store_true", help="tiny network (tests, smoke runs)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--fresh", action="store_true", help="ignore an existing training-state.pt")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args, rest = p.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            p.error(f"unrecognised argument {item!r} (overrides look like --section.key=value)")
        overrides.append(item[2:])
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    """Train a teacher; returns 0 on success, 2 on a configuration error."""
    args, overrides = _parse(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, overrides)
    except (ConfigError, OSError, tomllib.TOMLDecodeError) as err:
        print(f"fastui teacher: {err}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("fastui teacher: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    budget_s = args.minutes * 60 if args.minutes is not None else float("inf")
    tc = cfg.train
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arch = arch_from_config(cfg, tiny=args.tiny)
    (out / "config.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "arch": arch}, indent=2))

    try:
        batches = make_batches(cfg, device, args.data_root)
    except Exception as err:  # noqa: BLE001 - missing files, bad shard dir: one clear line
        print(f"fastui teacher: cannot load data: {err}", file=sys.stderr)
        return 2

    net = networks.build(arch).to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    memory_format = torch.channels_last if (on_cuda and tc.channels_last) else torch.preserve_format
    net = net.to(memory_format=memory_format)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr, betas=(0.9, 0.999), eps=1e-8, fused=on_cuda)
    step, nimg = 0, 0
    state_path = out / "training-state.pt"
    if state_path.exists() and not args.fresh:
        state = torch.load(state_path, map_location=device, weights_only=False)  # our own file: RNG states
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step, nimg = state["step"], state["nimg"]
        batches.load_state_dict(state["data"])
        _set_rng_state(state["rng"], device)
        print(f"resumed from {state_path} at step {step} ({nimg / 1000:.1f} kimg)")
    fwd = torch.compile(net) if (tc.compile and on_cuda) else net
    autocast = tc.bf16 and on_cuda
    n_params = networks.count_parameters(net)
    print(f"teacher: {arch['model']} {n_params / 1e6:.2f}M params, batch {tc.batch}, device {device}, "
          f"bf16 {autocast}, out {out}")

    def save_state():
        _atomic_torch_save({"model": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                            "step": step, "nimg": nimg, "data": batches.state_dict(), "rng": _rng_state(device),
                            "arch": arch}, state_path)

    total_nimg = int(tc.total_kimg * 1000)
    try:
        from tqdm import tqdm

        bar = tqdm(total=total_nimg // 1000, initial=nimg // 1000, unit="kimg", disable=args.no_progress,
                   dynamic_ncols=True)
    except ImportError:
        bar = None
    last_ckpt = time.monotonic()
    next_grid = (nimg // int(cfg.log.grid_every_kimg * 1000) + 1) * int(cfg.log.grid_every_kimg * 1000)
    loss_acc = torch.zeros((), device=device)
    loss_count = 0
    reason = "total_kimg reached"
    while nimg < total_nimg:
        if time.monotonic() - t_start > budget_s:
            reason = f"--minutes {args.minutes} budget"
            break
        if args.max_steps is not None and step >= args.max_steps:
            reason = f"--max-steps {args.max_steps}"
            break
        images_u8, labels = next(batches)
        images = images_u8.to(torch.float32) / 127.5 - 1
        if cfg.data.xflip:
            flip = torch.rand(images.shape[0], device=device) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        images = images.contiguous(memory_format=memory_format)
        lr = tc.lr * min(1.0, nimg / max(tc.lr_warmup_kimg * 1000, 1e-8)) if tc.lr_warmup_kimg > 0 else tc.lr
        for group in opt.param_groups:
            group["lr"] = lr
        loss = edm_loss(fwd, images, labels if net.label_dim else None, tc, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
        opt.step()
        step += 1
        nimg += images.shape[0]
        ema_update(ema, net, nimg, images.shape[0], tc)
        loss_acc += loss.detach()
        loss_count += 1
        if step % cfg.log.log_every == 0:
            mean_loss = (loss_acc / loss_count).item()  # host sync only every log_every steps
            loss_acc.zero_()
            loss_count = 0
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}", step=step, lr=f"{lr:.2e}")
                bar.n = nimg // 1000
                bar.refresh()
            else:
                print(f"step {step} kimg {nimg / 1000:.1f} loss {mean_loss:.4f}")
            if not math.isfinite(mean_loss):
                print("fastui teacher: loss is not finite; stopping", file=sys.stderr)
                save_state()
                return 1
        if nimg >= next_grid:
            _sample_grid(ema, cfg, device, out / f"grid-{nimg // 1000:06d}kimg.png")
            next_grid += int(cfg.log.grid_every_kimg * 1000)
        if time.monotonic() - last_ckpt > cfg.log.ckpt_every_minutes * 60:
            save_state()
            last_ckpt = time.monotonic()
    if bar is not None:
        bar.n = nimg // 1000
        bar.close()
    save_state()
    from fastui.teachers import save_checkpoint

    export = save_checkpoint(ema, out / "teacher")
    _sample_grid(ema, cfg, device, out / f"grid-{nimg // 1000:06d}kimg.png")
    elapsed = time.monotonic() - t_start
    print(f"stopped ({reason}) at step {step}, {nimg / 1000:.1f} kimg, {elapsed / 60:.2f} min; "
          f"EMA teacher -> {export}; grid -> {out / f'grid-{nimg // 1000:06d}kimg.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
