"""One wrapper per trained network over DeepSpeed or plain torch (DDP when world > 1), and the frozen teacher.

:class:`Engine` hides the backend behind ``forward / backward / step / frozen / save / load``; gradient accumulation
follows DeepSpeed's rule (``backward`` scales by ``1 / grad_accum``, ``step`` applies the optimizer on the
accumulation boundary). Non-finite gradient entries are zeroed and counted on the device (:class:`_GradGuard`: on
the torch backend once per optimizer step over the accumulated gradients, under DeepSpeed by a tensor hook on every
parameter, before any ZeRO reduction); the fake score's gradients are also value-clipped when the GAN is on.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .config import Config, ConfigError, Resolved

__all__ = ["Engine", "build_engines", "deepspeed_config", "dist_info", "init_distributed"]


def dist_info() -> tuple[int, int, int]:
    """``(rank, world, local_rank)`` from the environment (torchrun/deepspeed) or ``(0, 1, 0)``."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def init_distributed(cfg: Config, device: torch.device) -> None:
    """Initialise ``torch.distributed`` once (a plain single process sets the rendezvous variables itself)."""
    if dist.is_available() and dist.is_initialized():
        return
    if "RANK" not in os.environ:  # plain `python -m fastui.train`: one process
        import socket

        with socket.socket() as s:  # a free port, so two plain runs on one machine do not collide
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if cfg.engine.backend == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend)
    else:
        dist.init_process_group(backend=backend)


def deepspeed_config(cfg: Config, res: Resolved) -> dict:
    """The DeepSpeed config: fastui's batch sizes, ZeRO stage and precision, merged with ``engine.deepspeed_config``.

    Raises:
        ConfigError: the user JSON contradicts fastui's batch sizes, stage or precision.
    """
    ds = {
        "train_batch_size": res.global_size,
        "train_micro_batch_size_per_gpu": res.micro,
        "gradient_accumulation_steps": res.grad_accum,
        "zero_optimization": {"stage": cfg.engine.zero_stage},
        "bf16": {"enabled": cfg.engine.precision == "bf16"},
        "fp16": {"enabled": cfg.engine.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "gradient_clipping": 0.0,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if cfg.engine.deepspeed_config:
        path = Path(cfg.engine.deepspeed_config)
        try:
            user = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"engine.deepspeed_config: cannot read {str(path)!r}: {e}") from None
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            if key in user and user[key] not in ("auto", ds[key]):
                raise ConfigError(f"engine.deepspeed_config {path}: {key} = {user[key]} contradicts fastui's batch "
                                  f"config ({key} = {ds[key]}: batch.global_size, batch.micro, batch.grad_accum)")
        stage = user.get("zero_optimization", {}).get("stage", cfg.engine.zero_stage)
        if stage != cfg.engine.zero_stage:
            raise ConfigError(f"engine.deepspeed_config {path}: zero_optimization.stage = {stage} contradicts "
                              f"engine.zero_stage = {cfg.engine.zero_stage}")
        for prec in ("bf16", "fp16"):
            enabled = user.get(prec, {}).get("enabled", ds[prec]["enabled"])
            if enabled not in ("auto", ds[prec]["enabled"]):
                raise ConfigError(f"engine.deepspeed_config {path}: {prec}.enabled = {enabled} contradicts "
                                  f"engine.precision = {cfg.engine.precision!r}")
        for key, value in user.items():
            if isinstance(value, dict) and isinstance(ds.get(key), dict):
                ds[key] = {**ds[key], **{k: v for k, v in value.items() if v != "auto"}}
            elif value != "auto":
                ds[key] = value
        for key in ("optimizer", "scheduler"):
            if key in ds:
                raise ConfigError(f"engine.deepspeed_config {path}: remove {key!r}; fastui builds Adam from [optim]")
    return ds


class _GradGuard:
    """Zero non-finite gradient entries (and optionally value-clip), counting them on the device.

    Two forms with one rule: ``hooks=True`` (DeepSpeed, whose ZeRO stages move gradients out of ``p.grad``) acts on
    every parameter's gradient as autograd produces it, through a tensor hook (~7 small ops per parameter);
    ``hooks=False`` (the torch backend) acts once per optimizer step on the accumulated (and DDP-reduced) gradients,
    :meth:`apply`: one concatenated copy, a handful of ops over it, one multi-tensor copy back. On a GPU the hooks'
    per-parameter launches were ~40% of the operations of a distillation iteration of the demo network.
    """

    def __init__(self, params, device, clip: float = 0.0, hooks: bool = True):
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.clip = clip
        self.handles = [p.register_hook(self._clean) for p in params if p.requires_grad] if hooks else []

    def _clean(self, grad: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(grad)
        self.count += bad.sum()  # device tensor: no host sync
        grad = torch.where(bad, torch.zeros((), dtype=grad.dtype, device=grad.device), grad)
        if self.clip > 0:
            grad = grad.clamp(-self.clip, self.clip)
        return grad

    def apply(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Clean ``grads`` in place (same rule as the hooks); returns their global L2 norm after cleaning. With hooks
        the gradients are clean already: only the norm."""
        if self.handles:
            return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        views, odd = [], []
        for g in grads:
            v = _memory_order_view(g)
            (views if v is not None and v.dtype == grads[0].dtype else odd).append(v if v is not None else g)
        norms = []
        if views:
            flat = self._clean(torch.cat(views))
            torch._foreach_copy_(views, list(flat.split([v.numel() for v in views])))
            norms.append(torch.linalg.vector_norm(flat.float()))
        for g in odd:  # gradients that are not dense, or of another dtype: one at a time
            g.copy_(self._clean(g))
            norms.append(torch.linalg.vector_norm(g.float()))
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=self.count.device)


def _memory_order_view(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of ``t``'s elements in memory order (contiguous or channels-last), or None. The guard's rule is
    element-wise, so the order of the concatenation does not matter, only that the copy back uses the same views."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return None


def make_adam(params, cfg: Config, lr: float, eps: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam (no weight decay) as ``optim.impl`` asks: torch's (fused where ``optim.fused``: one kernel per parameter
    group, CUDA and CPU), NVIDIA apex's FusedAdam (CUDA), or DeepSpeed's FusedAdam (CUDA) / DeepSpeedCPUAdam (CPU,
    JIT-built on first use). Raises ``RuntimeError`` naming the missing package when apex or DeepSpeed is absent."""
    betas = (float(cfg.optim.beta1), float(cfg.optim.beta2))
    impl = cfg.optim.impl
    if impl == "apex":
        if device.type != "cuda":
            raise RuntimeError("optim.impl = 'apex': apex's FusedAdam runs on CUDA only (use torch or deepspeed)")
        try:
            from apex.optimizers import FusedAdam
        except ImportError as e:
            raise RuntimeError("optim.impl = 'apex' needs NVIDIA apex (github.com/NVIDIA/apex; PyPI's 'apex' is an "
                               "unrelated package)") from e
        return FusedAdam(params, lr=lr, betas=betas, eps=eps, adam_w_mode=False, weight_decay=0.0)
    if impl == "deepspeed":
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
        except ImportError as e:
            raise RuntimeError("optim.impl = 'deepspeed' needs DeepSpeed (pip install '.[deepspeed]')") from e
        if device.type == "cuda":
            return FusedAdam(params, lr=lr, betas=betas, eps=eps, adam_w_mode=False, weight_decay=0.0)
        return DeepSpeedCPUAdam(params, lr=lr, betas=betas, eps=eps, adamw_mode=False, weight_decay=0.0)
    fused = cfg.optim.fused and device.type in ("cuda", "cpu")
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, **({"fused": True} if fused else {}))


class Engine:
    """A trained network: forward, backward (scaled for accumulation), step on the boundary, save/load.

    Args:
        module: the network (parameters on the device).
        cfg, res: config and resolved values.
        lr: learning rate.
        groups: optional ``[(params, lr), ...]`` Adam parameter groups covering the module's parameters in their
            order (e.g. the fake score, then its discriminator head at ``discriminator.lr``); default one group.
        grad_clip: value clip of gradients (0 = none); non-finite entries are always zeroed.
        name: ``"generator"`` or ``"fake"`` (checkpoint sub-directory).
    """

    def __init__(self, module: nn.Module, cfg: Config, res: Resolved, lr: float, name: str, device: torch.device,
                 grad_clip: float = 0.0, groups: list[tuple[list, float]] | None = None):
        self.name, self.cfg, self.res, self.device = name, cfg, res, device
        self.kind = cfg.engine.backend
        self.grad_accum = res.grad_accum
        self.micro_steps = 0
        self.hyper = {"lr": lr, "betas": (cfg.optim.beta1, cfg.optim.beta2), "eps": res.eps}
        if groups:
            ordered = [p for ps, _ in groups for p in ps]
            if [id(p) for p in ordered] != [id(p) for p in module.parameters()]:
                raise ValueError(f"{name}: the parameter groups must cover the module's parameters in their order")
            self.group_lrs = [float(g_lr) for _, g_lr in groups]
            params = [{"params": list(ps), "lr": float(g_lr)} for ps, g_lr in groups]
        else:
            self.group_lrs, params = [float(lr)], module.parameters()
        opt = make_adam(params, cfg, lr, res.eps, device)
        self.guard = _GradGuard(module.parameters(), device, grad_clip, hooks=self.kind == "deepspeed")
        if self.kind == "deepspeed":
            import deepspeed

            self.engine, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=opt,
                                                                     config=deepspeed_config(cfg, res))
            self.module = self.engine.module
        else:
            self.module, self.optimizer = module, opt
            self.engine = module
            if res.world > 1:
                from torch.nn.parallel import DistributedDataParallel

                self.engine = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
        self._grad_norm = torch.zeros((), device=device)

    def __call__(self, *args, **kwargs):
        """Forward through the engine (gradient reduction hooks, ZeRO-3 gathering)."""
        return self.engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss, scaled by ``1 / grad_accum`` (DeepSpeed does the scaling itself)."""
        if self.kind == "deepspeed":
            self.engine.backward(loss)
            return
        boundary = (self.micro_steps + 1) % self.grad_accum == 0
        ctx = self.engine.no_sync() if (not boundary and isinstance(self.engine, nn.parallel.DistributedDataParallel)) \
            else contextlib.nullcontext()
        with ctx:
            (loss / self.grad_accum).backward()

    def step(self) -> None:
        """End of a micro-step: the optimizer step happens on the accumulation boundary."""
        self.micro_steps += 1
        if self.kind == "deepspeed":
            self.engine.step()
            return
        if self.micro_steps % self.grad_accum == 0:
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            if grads:
                self._grad_norm = self.guard.apply(grads)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def grad_norm(self):
        """Global gradient norm of the last optimizer step (a device tensor, a float from DeepSpeed, or None)."""
        if self.kind == "deepspeed":
            return self.engine.get_global_grad_norm()
        return self._grad_norm

    def _configured_lr(self, group: int) -> float:
        return self.group_lrs[group] if group < len(self.group_lrs) else self.hyper["lr"]

    def scale_lr(self, scale: float) -> None:
        """Set every parameter group's rate to its configured rate times ``scale`` (``optim.lr_decay_*``)."""
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = self._configured_lr(i) * scale

    @property
    def lr(self) -> float:
        """Current learning rate of the first parameter group (host value)."""
        return self.lrs[0]

    @property
    def lrs(self) -> list[float]:
        """Current learning rate of every parameter group, in order (host values)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    @contextlib.contextmanager
    def frozen(self):
        """Parameters collect no gradient (inputs still do) and dropout is off: the generator step (MATH §7)."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        was_training = self.module.training
        for p in params:
            p.requires_grad_(False)
        self.module.eval()
        try:
            yield self.module
        finally:
            for p in params:
                p.requires_grad_(True)
            self.module.train(was_training)

    def save(self, directory: Path) -> None:
        """Collective for DeepSpeed (every rank writes its shards); rank 0 only for torch."""
        if self.kind == "deepspeed":
            self.engine.save_checkpoint(str(directory), tag=self.name, save_latest=False)
        elif not dist.is_initialized() or dist.get_rank() == 0:
            directory.mkdir(parents=True, exist_ok=True)
            torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "micro_steps": self.micro_steps}, directory / f"{self.name}.pt")

    def load(self, directory: Path, lr_scale: float = 1.0) -> dict[str, tuple]:
        """Restore parameters and optimizer state written by :meth:`save`.

        The Adam moments come from the checkpoint; the hyperparameters (lr, betas, eps) from this run's config, so a
        resumed run may change them (an optimizer's saved state would otherwise bring back the old values).
        ``lr_scale``: the ``optim.lr_decay_*`` multiplier the saved rates were taken at (a decayed rate is no change).
        Returns ``{name: (saved, now)}`` for each hyperparameter that changed (``now`` at ``lr_scale``).
        """
        if self.kind == "deepspeed":
            path, _ = self.engine.load_checkpoint(str(directory), tag=self.name, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed checkpoint {self.name} in {directory}")
        else:
            state = torch.load(directory / f"{self.name}.pt", map_location=self.device, weights_only=True)
            self.module.load_state_dict(state["module"])
            self.optimizer.load_state_dict(_regroup(state["optimizer"], self.optimizer.param_groups, self.name))
            self.micro_steps = int(state["micro_steps"])
        changed = {}
        for i, group in enumerate(self.optimizer.param_groups):
            hyper = {**self.hyper, "lr": self._configured_lr(i)}
            for key, value in hyper.items():
                saved = tuple(group[key]) if key == "betas" else group[key]
                if key == "lr" and not math.isclose(saved, value * lr_scale, rel_tol=1e-9):
                    changed[key if i == 0 else f"{key}[group {i}]"] = (saved, value * lr_scale)
                elif key != "lr" and saved != value:
                    changed[key if i == 0 else f"{key}[group {i}]"] = (saved, value)
                group[key] = value
        return changed

    def state_bytes(self) -> tuple[int, int]:
        """Bytes of parameters and optimizer state held by this rank (ZeRO partitions counted locally)."""
        param_bytes = 0
        for p in self.module.parameters():
            t = getattr(p, "ds_tensor", None)
            t = t if t is not None else p.data
            param_bytes += t.numel() * t.element_size()
        opt_bytes, seen = 0, set()
        opt = self.optimizer
        inner = getattr(opt, "optimizer", opt)  # DeepSpeed's ZeRO optimizers wrap the torch one
        for group in (getattr(opt, "single_partition_of_fp32_groups", None) or [],
                      getattr(opt, "fp32_partitioned_groups_flat", None) or [],
                      getattr(opt, "fp32_groups_flat_partition", None) or []):
            for t in group:
                if torch.is_tensor(t) and id(t) not in seen:
                    seen.add(id(t))
                    opt_bytes += t.numel() * t.element_size()
        for st in inner.state.values():
            for v in st.values():
                if torch.is_tensor(v) and v.numel() > 1 and id(v) not in seen:
                    seen.add(id(v))
                    opt_bytes += v.numel() * v.element_size()
        return param_bytes, opt_bytes


def _regroup(saved: dict, groups: list[dict], name: str) -> dict:
    """An optimizer state dict saved with other parameter groups over the same parameters (one group before
    ``discriminator.lr`` split the head off, or the reverse), re-cut to ``groups``' sizes; the per-parameter state
    (Adam moments, keyed by position) carries over unchanged."""
    sizes = [len(g["params"]) for g in groups]
    if [len(g["params"]) for g in saved["param_groups"]] == sizes:
        return saved
    ids = [i for g in saved["param_groups"] for i in g["params"]]
    if len(ids) != sum(sizes):
        raise ValueError(f"{name}: the checkpoint's optimizer holds {len(ids)} parameters, this run's {sum(sizes)}")
    base, cut, start = saved["param_groups"][0], [], 0
    for n in sizes:
        cut.append({**base, "params": ids[start:start + n]})
        start += n
    return {**saved, "param_groups": cut}


class FrozenTeacher:
    """The teacher: no optimizer; under DeepSpeed ZeRO-3 its parameters are partitioned like the trained ones."""

    def __init__(self, module: nn.Module, cfg: Config, res: Resolved):
        self.module = module
        has_params = any(True for _ in module.parameters())
        self.engine = None
        if cfg.engine.backend == "deepspeed" and has_params and cfg.engine.zero_stage == 3:
            import deepspeed

            # deepspeed.initialize without an optimizer: ZeRO-3 partitions the frozen parameters and gathers
            # them in forward, like those of the trained networks (stages 1-2 would demand an optimizer).
            self.engine, _, _, _ = deepspeed.initialize(model=module, config=deepspeed_config(cfg, res))
            self.module = self.engine.module
        elif cfg.engine.backend == "deepspeed" and cfg.engine.precision in ("bf16", "fp16") and has_params:
            dtype = torch.bfloat16 if cfg.engine.precision == "bf16" else torch.float16
            self.module = module.to(dtype)  # same storage precision as DeepSpeed's trained copies
        elif cfg.engine.backend == "torch" and has_params and cfg.model.teacher_bf16 and (
                cfg.engine.autocast_bf16 or cfg.engine.precision == "bf16"):
            # Autocast re-casts the weights of a frozen network in every forward (its cast cache holds only
            # parameters that require grad); stored in bf16 they are cast once, here.
            self.module = module.to(torch.bfloat16)

    def __call__(self, *args, **kwargs):
        # Call the module itself: ZeRO-3's gather hooks live on the module, and the engine's forward would
        # switch on training-time bookkeeping that a frozen network does not need.
        return self.module(*args, **kwargs)


def build_engines(cfg: Config, res: Resolved, teacher: nn.Module, generator: nn.Module, fake: nn.Module,
                  device: torch.device):
    """``(teacher, generator_engine, fake_engine)``; the fake engine clips gradients when the GAN is on."""
    clip = cfg.optim.fake_grad_clip if res.gan else 0.0
    gen_engine = Engine(generator, cfg, res, cfg.optim.lr_g, "generator", device)
    groups = None
    head = getattr(fake, "head", None)
    if cfg.discriminator.lr > 0 and head is not None:
        in_head = {id(p) for p in head.parameters()}
        groups = [([p for p in fake.parameters() if id(p) not in in_head], cfg.optim.lr_fake),
                  (list(head.parameters()), cfg.discriminator.lr)]
    fake_engine = Engine(fake, cfg, res, cfg.optim.lr_fake, "fake", device, grad_clip=clip, groups=groups)
    return FrozenTeacher(teacher, cfg, res), gen_engine, fake_engine
