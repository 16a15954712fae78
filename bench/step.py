"""Training-step benchmark: one full SiD iteration (fake-score DSM step + generator step), eager reference vs fastui.

``python -m bench.step [--quick] [--device cpu|cuda] [--out CSV] [--max-batch]``

Providers (same networks, weights, random draws, batch and precision):

- ``reference``: the step as released SiD/SiDA-style code writes it: eager networks, the loss inline
  (``y_real - y_fake`` ...; fp32 loss maths), ``torch.optim.Adam`` with its defaults, ``nan_to_num`` on the gradients,
  no activation checkpointing.
- ``fastui[+options]``: the product's step, :func:`fastui.train.step.train_iteration`, on networks and engines built by
  :mod:`fastui.train` from a :class:`~fastui.train.config.Config` whose knobs are the options: fused loss
  (``fastui.ops``), activation checkpointing (``model.activation_checkpointing``), ``torch.compile``
  (``model.compile``), bf16 autocast with fp32 loss maths (``engine.autocast_bf16``), fused Adam (``optim.fused``),
  channels_last (``model.channels_last``). Where the product does not yet do what an option asks (see ``SHIMS``), the
  bench applies a small, named shim and writes its name into the row's ``shims`` column, so no number hides what
  produced it.

Each CSV row (``bench/results/step.csv``) carries images/s (p20/p50/p80 of the iteration time), peak memory (GPU),
model FLOPs of one iteration (``torch.utils.flop_counter.FlopCounterMode`` on the reference iteration: recomputation
is not model work), MFU against a peak measured in the same run (large matmul in the benchmark's dtype), and the
provenance of :mod:`bench.common`. Providers are timed interleaved (A B C A B C ...) so a shared machine's load
affects them alike; the speedup column is each p50 against the reference's p50 at the same precision.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench.common import append_csv, percentile, provenance, synchronize

RESULTS = Path(__file__).resolve().parent / "results"
DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 tensor-core peak (SXM datasheet)


# --------------------------------------------------------------------------------------------------------------------
# What is benchmarked
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One provider configuration. ``name`` is what the CSV row calls it."""

    name: str
    reference: bool = False
    fused_loss: bool = True
    checkpoint: tuple = ()  # subset of ("teacher", "fake", "generator")
    compile: bool = False
    bf16: bool = False
    fused_adam: bool = False
    adam: str = "torch"  # optim.impl: torch, apex, deepspeed
    channels_last: bool = False


@dataclass
class Setting:
    """A network and batch to benchmark."""

    label: str
    arch: dict
    batch: int
    variants: list
    reps: int = 10
    warmup: int = 2


def _arch(name: str) -> dict:
    from fastui import networks

    if name == "small":  # the demo-size DDPM++ (1x32x32, 10 classes, ~1.7M parameters)
        return networks.small_unet_arch()
    if name == "tiny":
        return networks.tiny_arch(networks.small_unet_arch())
    if name == "ddpmpp":
        return networks.ddpmpp_cifar10_arch(cond=False)
    if name == "adm":
        return networks.adm_imagenet64_arch()
    raise ValueError(f"unknown network {name!r}; valid: small, tiny, ddpmpp, adm")


# --------------------------------------------------------------------------------------------------------------------
# fastui provider: the product's step
# --------------------------------------------------------------------------------------------------------------------


def fastui_config(arch: dict, batch: int, variant: Variant, device: torch.device, seed: int = 0, lr: float = 1e-5,
                  eps: float = 0.0):
    """The training config whose knobs are ``variant``'s options (SiD, alpha 1.2, one process, no warm-up).

    Returns:
        ``(cfg, res)`` as :func:`fastui.train.config.resolve` gives them.
    """
    from fastui.train.config import Config, resolve, validate

    cfg = Config()
    cfg.teacher.spec, cfg.teacher.arch = "random", dict(arch)
    cfg.run.seed = seed
    cfg.loss.method = "sid"
    cfg.loss.backend = "auto"
    cfg.schedule.warmup_images = 0
    cfg.batch.micro = cfg.batch.global_size = batch
    cfg.optim.lr_g = cfg.optim.lr_fake = lr
    cfg.optim.eps = eps
    cfg.optim.fused = variant.fused_adam
    cfg.optim.impl = variant.adam
    cfg.model.activation_checkpointing = list(variant.checkpoint)
    cfg.model.compile = variant.compile
    cfg.model.channels_last = variant.channels_last
    cfg.engine.backend = "torch"
    cfg.engine.autocast_bf16 = variant.bf16
    cfg.engine.device = device.type
    validate(cfg)
    return cfg, resolve(cfg, world=1)


class _Losses(types.SimpleNamespace):
    """What ``fastui.train.step`` sees as ``fastui`` while a fused-loss shim is active (attribute fall-through)."""

    def __getattr__(self, name):
        import fastui

        return getattr(fastui, name)


# The product gaps this bench bridges (each was missing from the product when the bench was written); a shim is
# applied only while the product lacks the behaviour, and its name goes into the CSV row.
SHIMS = {
    "fused_loss": "train.step calls fastui.preset_loss/fake_score_loss = the unfused reference; bench routes them "
                  "to fastui.ops",
    "cpu_fused_adam": "Engine enables fused Adam only on CUDA; torch's fused Adam also runs on the CPU",
    "frozen_backward": "train.step runs the generator's backward after Engine.frozen() has unfrozen the fake score; a "
                       "checkpointed fake then recomputes with requires_grad parameters (CheckpointError); the bench "
                       "runs that backward with the fake still frozen",
}


def _backward_outside_frozen() -> bool:
    """Whether ``generator_micro_step`` calls ``ctx.gen.backward`` outside the ``ctx.fake.frozen()`` block."""
    import inspect

    from fastui.train import step as _step

    lines = inspect.getsource(_step.generator_micro_step).splitlines()
    frozen = next((ln for ln in lines if "ctx.fake.frozen()" in ln), None)
    backward = next((ln for ln in lines if "ctx.gen.backward(" in ln), None)
    if frozen is None or backward is None:
        return False
    indent = lambda ln: len(ln) - len(ln.lstrip())
    return indent(backward) <= indent(frozen)


class FastuiStep:
    """The product's iteration (:func:`fastui.train.step.train_iteration`) on networks built by ``fastui.train``.

    Args:
        arch: network arch (contract 2); the teacher is random with ``seed`` (generator and fake copy it).
        batch: images per step.
        variant: the options.
        device: where it runs.
        lr, eps: Adam settings (``eps = 0``: the engine's default).
    """

    def __init__(self, arch: dict, batch: int, variant: Variant, device: torch.device, seed: int = 0,
                 lr: float = 1e-5, eps: float = 0.0):
        import fastui
        from fastui.train import models as _models
        from fastui.train import step as _step
        from fastui.train.engines import build_engines
        from fastui.train.models import build_networks, data_shape
        from fastui.train.schedule import Phase

        self.variant, self.device, self.shims = variant, device, []
        self.cfg, self.res = fastui_config(arch, batch, variant, device, seed, lr, eps)
        with torch.random.fork_rng(devices=[]):
            teacher, gen, fake = build_networks(self.cfg, device, needs_disc=False)
        self.shape = data_shape(gen)
        prepare = getattr(_models, "prepare_networks", None)
        if prepare is not None:  # the product's own channels_last / compile preparation, once it is a function
            prepare(self.cfg, teacher, gen, fake)
        else:  # what fastui.train.run.train does inline with model.channels_last and model.compile
            if variant.channels_last and len(self.shape) == 3:
                for net in (teacher, gen, fake):
                    net.to(memory_format=torch.channels_last)
            if variant.compile:
                for net in (teacher, gen, fake):
                    net.compile()
        self.teacher, self.gen, self.fake = build_engines(self.cfg, self.res, teacher, gen, fake, device)
        if "fake" in variant.checkpoint and _backward_outside_frozen():
            gen_backward, fake_engine = self.gen.backward, self.fake

            def backward(loss, gen_backward=gen_backward, fake_engine=fake_engine):
                with fake_engine.frozen():
                    gen_backward(loss)

            self.gen.backward = backward
            self._shim("frozen_backward")
        for eng in (self.gen, self.fake):
            if variant.adam == "torch" and variant.fused_adam and not eng.optimizer.defaults.get("fused"):
                eng.optimizer = torch.optim.Adam(eng.module.parameters(), **{**eng.optimizer.defaults, "fused": True,
                                                                             "foreach": None})
                self._shim("cpu_fused_adam")
        # StepContext.autocast was a bool and became a dtype (None = off); accept both.
        amp_default = next(f.default for f in dataclasses.fields(_step.StepContext) if f.name == "autocast")
        amp = variant.bf16 if isinstance(amp_default, bool) else (torch.bfloat16 if variant.bf16 else None)
        self.ctx = _step.StepContext(self.cfg, self.res, self.teacher, self.gen, self.fake, self.shape,
                                     int(getattr(gen, "label_dim", 0) or 0), device, 0, _step.Stats(device),
                                     autocast=amp)
        self._step = _step
        self._phase = Phase(True, False)
        self._losses = None
        if variant.fused_loss and fastui.preset_loss is not fastui.ops.preset_loss:
            self._losses = _Losses(preset_loss=fastui.ops.preset_loss, fake_score_loss=fastui.ops.fake_score_loss)
            self._shim("fused_loss")
        elif not variant.fused_loss and fastui.preset_loss is fastui.ops.preset_loss:
            self._losses = _Losses(preset_loss=fastui.functional.preset_loss,
                                   fake_score_loss=fastui.functional.fake_score_loss)

    def _shim(self, name: str) -> None:
        if name not in self.shims:
            self.shims.append(name)

    @contextlib.contextmanager
    def _loss_impl(self):
        if self._losses is None:
            yield
            return
        saved = self._step.fastui
        self._step.fastui = self._losses
        try:
            yield
        finally:
            self._step.fastui = saved

    def set_batch(self, batch: int) -> None:
        """Change the batch (the networks and optimizers are kept)."""
        self.res = replace(self.res, micro=batch, global_size=batch)
        self.ctx.res = self.res

    def iteration(self, it: int) -> None:
        """One iteration: the fake-score step, then the generator step."""
        with self._loss_impl():
            self._step.train_iteration(self.ctx, it, self._phase)

    def modules(self) -> dict:
        """``{"generator", "fake", "teacher"}`` modules (for parameter comparisons)."""
        return {"generator": self.gen.module, "fake": self.fake.module.fake, "teacher": self.teacher.module}

    def optimizers(self) -> list:
        """The two optimizers (generator, fake score)."""
        return [self.gen.optimizer, self.fake.optimizer]


# --------------------------------------------------------------------------------------------------------------------
# Eager reference: the step as released SiD-style code writes it
# --------------------------------------------------------------------------------------------------------------------


class ReferenceStep:
    """A straightforward eager SiD(alpha) iteration with the loss written inline (fp32 loss maths).

    Same networks (built from ``arch`` with ``seed`` like the fastui provider), same draws
    (:class:`fastui.train.step.Draws` with the same counters), same batch, Adam(beta1=0, beta2=0.999).
    ``bf16`` runs the forwards under bf16 autocast; the loss is computed from fp32 copies of the outputs.
    """

    def __init__(self, arch: dict, batch: int, device: torch.device, bf16: bool = False, seed: int = 0,
                 lr: float = 1e-5, eps: float = 0.0, alpha: float = 1.2, lambda_g: float = 100.0):
        from fastui import networks
        from fastui.train import step as _step

        self.cfg, self.res = fastui_config(arch, batch, Variant("reference", reference=True), device, seed, lr, eps)
        self.device, self.bf16, self.alpha, self.lambda_g = device, bf16, alpha, lambda_g
        self.sigma_init = self.cfg.model.sigma_init
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            teacher = networks.build(arch)
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.gen = copy.deepcopy(self.teacher).train().requires_grad_(True)
        self.fake = copy.deepcopy(self.teacher).train().requires_grad_(True)
        self.shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
        self.label_dim = teacher.label_dim
        adam_eps = eps or (1e-6 if bf16 else 1e-8)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=lr, betas=(0.0, 0.999), eps=adam_eps)
        self.opt_fake = torch.optim.Adam(self.fake.parameters(), lr=lr, betas=(0.0, 0.999), eps=adam_eps)
        self._Draws = _step.Draws
        self._draw_ctx = types.SimpleNamespace(cfg=self.cfg, res=self.res, rank=0, device=device)
        self.shims: list = []

    def set_batch(self, batch: int) -> None:
        """Change the batch (the networks and optimizers are kept)."""
        self.res = replace(self.res, micro=batch, global_size=batch)
        self._draw_ctx.res = self.res

    def _amp(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _draws(self, it: int, sub: int):
        d = self._Draws(self._draw_ctx, it, sub, 0)
        labels = d.labels(self.label_dim) if self.label_dim else None
        return d, labels

    @staticmethod
    def _sanitize(params) -> None:
        for p in params:
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0, out=p.grad)

    def iteration(self, it: int) -> None:
        """One iteration: the fake-score step, then the generator step."""
        s0, sd = self.sigma_init, self.teacher.sigma_data
        # Fake score: denoising score matching on detached generator samples.
        d, labels = self._draws(it, 1)
        z = d.randn(self.shape)
        with torch.no_grad(), self._amp():
            images = self.gen(s0 * z, torch.full((z.shape[0],), s0, device=self.device), labels).float()
        sigma = d.sigma("lognormal")
        n = d.randn(self.shape)
        sig = sigma.view(-1, 1, 1, 1)
        with self._amp():
            y_fake = self.fake(images + sig * n, sigma, labels)
        weight = (sig**2 + sd**2) / (sig * sd) ** 2
        loss = (weight * (y_fake.float() - images) ** 2).sum(dim=(1, 2, 3)).mean()
        loss.backward()
        self._sanitize(self.fake.parameters())
        self.opt_fake.step()
        self.opt_fake.zero_grad(set_to_none=True)
        # Generator: SiD loss through the inputs of the teacher and the (frozen) fake score.
        d, labels = self._draws(it, 0)
        z = d.randn(self.shape)
        with self._amp():
            images = self.gen(s0 * z, torch.full((z.shape[0],), s0, device=self.device), labels).float()
        sigma = d.sigma(self.res.sigma_g)
        eps = d.randn(self.shape)
        sig = sigma.view(-1, 1, 1, 1)
        x_t = images + sig * eps
        self.fake.requires_grad_(False)
        self.fake.eval()
        try:
            with self._amp():
                y_fake = self.fake(x_t, sigma, labels)
                y_real = self.teacher(x_t, sigma, labels)
            y_fake, y_real = y_fake.float(), y_real.float()
            weight_factor = (images - y_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-5).detach()
            loss = (y_real - y_fake) * ((y_real - images) - self.alpha * (y_real - y_fake)) / weight_factor
            loss = self.lambda_g * loss.sum(dim=(1, 2, 3)).mean()
            loss.backward()
        finally:  # an out-of-memory error (largest-batch search) must not leave the fake score frozen
            self.fake.requires_grad_(True)
            self.fake.train()
        self._sanitize(self.gen.parameters())
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)

    def modules(self) -> dict:
        """``{"generator", "fake", "teacher"}`` modules (for parameter comparisons)."""
        return {"generator": self.gen, "fake": self.fake, "teacher": self.teacher}

    def optimizers(self) -> list:
        """The two optimizers (generator, fake score)."""
        return [self.opt_g, self.opt_fake]


def make_provider(arch: dict, batch: int, variant: Variant, device: torch.device, seed: int = 0, **kw):
    """A :class:`ReferenceStep` or :class:`FastuiStep` for ``variant``."""
    if variant.reference:
        return ReferenceStep(arch, batch, device, bf16=variant.bf16, seed=seed, **kw)
    return FastuiStep(arch, batch, variant, device, seed=seed, **kw)


# --------------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------------


def model_flops(provider, it: int = 10_000) -> int:
    """FLOPs of one iteration as ``FlopCounterMode`` counts them (matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        provider.iteration(it)
    synchronize(provider.device)
    return int(counter.get_total_flops())


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int = 0, reps: int = 10) -> float:
    """Measured dense matmul throughput (TFLOP/s) of ``n x n`` operands in ``dtype`` on ``device`` (p80 of reps)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / percentile(times, 20) / 1e12


def matmul_probe(device: torch.device, dtype: torch.dtype, n: int = 0) -> tuple[Callable[[], object], float]:
    """A dense ``n x n`` matmul in ``dtype`` and its FLOPs, to time beside the providers (peak under the same load)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: a @ b), 2.0 * n**3


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def resident_bytes(provider) -> int:
    """Bytes of the provider's own parameters and optimizer state (what it holds between iterations)."""
    seen, total = set(), 0
    tensors = [q for m in provider.modules().values() for q in m.parameters()]
    tensors += [v for opt in provider.optimizers() for st in opt.state.values() for v in st.values()
                if torch.is_tensor(v)]
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def peak_memory_gb(provider, it: int) -> float:
    """Peak GPU memory (GB) of one iteration after warm-up, counting only this provider's tensors: its resident
    parameters and optimizer state plus everything the iteration allocates (``nan`` on the CPU). Other providers
    built in the same run stay resident and are subtracted."""
    if provider.device.type != "cuda":
        return float("nan")
    synchronize(provider.device)
    others = torch.cuda.memory_allocated(provider.device) - resident_bytes(provider)
    torch.cuda.reset_peak_memory_stats(provider.device)
    provider.iteration(it)
    synchronize(provider.device)
    return (torch.cuda.max_memory_allocated(provider.device) - others) / 1e9


def time_interleaved(providers: dict, reps: int, warmup: int, device: torch.device,
                     max_seconds: float | None = None) -> dict:
    """Iteration times (ms) of several providers, measured round-robin (A B C A B C ...).

    Returns:
        ``{name: [ms, ...]}``.
    """
    it = 0
    for _ in range(warmup):
        for p in providers.values():
            p.iteration(it)
            it += 1
    synchronize(device)
    times = {name: [] for name in providers}
    start = time.perf_counter()
    for _ in range(reps):
        for name, p in providers.items():
            t0 = time.perf_counter()
            p.iteration(it)
            synchronize(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
            it += 1
        if max_seconds is not None and len(times[name]) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return times


def _zero_grads(provider) -> None:
    for m in provider.modules().values():
        for q in m.parameters():
            q.grad = None


def largest_batch(provider, device: torch.device, start: int = 8, limit: int = 4096,
                  max_seconds: float = 120.0) -> int:
    """The largest batch for which one iteration of ``provider`` runs without running out of GPU memory.

    Doubling from ``start``, then bisection to within 1/16; the networks and optimizers are built once and only the
    batch changes (``provider.set_batch``). Stops after ``max_seconds`` with the best batch found so far.
    """
    t0 = time.perf_counter()

    def fits(batch: int) -> bool:
        provider.set_batch(batch)
        try:
            provider.iteration(0)
            synchronize(device)
            return True
        except (RuntimeError, torch.OutOfMemoryError) as err:
            if not _is_oom(err):
                raise
            return False
        finally:
            _zero_grads(provider)
            _free(device)

    good, bad = 0, None
    b = start
    while b <= limit and time.perf_counter() - t0 < max_seconds:
        if fits(b):
            good, b = b, b * 2
        else:
            bad = b
            break
    if bad is None:
        return good
    while bad - good > max(1, good // 16) and time.perf_counter() - t0 < max_seconds:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


# --------------------------------------------------------------------------------------------------------------------
# Settings and the run
# --------------------------------------------------------------------------------------------------------------------

REF = Variant("reference", reference=True, fused_loss=False)
REF_BF16 = Variant("reference-bf16", reference=True, fused_loss=False, bf16=True)


def cpu_settings(quick: bool, compile_too: bool) -> list:
    """CPU: the demo-size DDPM++ (small network). Compile is measured only when asked (its warm-up is minutes)."""
    fast = Variant("fastui", fused_adam=True)
    variants = [REF, fast, replace(fast, name="fastui+channels_last", channels_last=True),
                REF_BF16, Variant("fastui-bf16", bf16=True, fused_adam=True),
                Variant("fastui-bf16+channels_last", bf16=True, fused_adam=True, channels_last=True)]
    if compile_too:
        variants.append(Variant("fastui+compile", fused_adam=True, compile=True))
    return [Setting("small-ddpmpp-1x32", _arch("small"), 8 if quick else 16, variants, reps=5 if quick else 15,
                    warmup=1)]


def gpu_settings(quick: bool, compile_too: bool) -> list:
    """GPU: ADM ImageNet-64 and DDPM++ CIFAR-10 in bf16 (fp32 parameters, bf16 autocast)."""
    best = Variant("fastui-bf16", bf16=True, fused_adam=True, channels_last=True)
    ckpt = replace(best, name="fastui-bf16+ckpt", checkpoint=("teacher", "fake", "generator"))
    adm = [REF_BF16, best, ckpt]
    if compile_too:
        adm.append(replace(best, name="fastui-bf16+compile", compile=True))
    ddpm = [REF_BF16, best]
    # ADM at 16 per GPU: the released ImageNet-64 recipes run 1-16 per GPU with the three networks in one graph, and
    # the three providers of a setting are resident at once.
    return [Setting("adm-imagenet64", _arch("adm"), 16, adm, reps=5 if quick else 20, warmup=2),
            Setting("ddpmpp-cifar10", _arch("ddpmpp"), 64, ddpm, reps=5 if quick else 20, warmup=2)]


def run_setting(setting: Setting, device: torch.device, prov: dict, peak_tflops: dict, max_seconds: float,
                profile_path: Path | None = None) -> list:
    """Build the providers of one setting, time them interleaved, and return the CSV rows."""
    providers, build_s, shims = {}, {}, {}
    for v in setting.variants:
        t0 = time.perf_counter()
        providers[v.name] = make_provider(setting.arch, setting.batch, v, device)
        if v.compile:  # compile happens on the first calls: time it separately
            providers[v.name].iteration(0)
            providers[v.name].iteration(1)
            synchronize(device)
        build_s[v.name] = time.perf_counter() - t0
        shims[v.name] = "+".join(providers[v.name].shims)
    flops = {}
    for bf16 in (False, True):
        ref = next((v for v in setting.variants if v.reference and v.bf16 == bf16), None)
        if ref is not None:
            flops[bf16] = model_flops(providers[ref.name])
    probes = {}
    for key, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        fn, probe_flops = matmul_probe(device, dtype)
        probes[f"matmul-{key}"] = (types.SimpleNamespace(iteration=lambda it, fn=fn: fn()), probe_flops)
    times = time_interleaved({**providers, **{k: v[0] for k, v in probes.items()}}, setting.reps, setting.warmup,
                             device, max_seconds)
    # The peak of the MFU column: the best of the start-of-run measurement and the matmuls timed in every round.
    peak_tflops = {key: max(peak_tflops[key], probes[f"matmul-{key}"][1] / (percentile(times[f"matmul-{key}"], 20)
                                                                             * 1e-3) / 1e12)
                   for key in ("fp32", "bf16")}
    rows = []
    for v in setting.variants:
        p50 = percentile(times[v.name], 50)
        ref = next((r for r in setting.variants if r.reference and r.bf16 == v.bf16), None)
        ref_p50 = percentile(times[ref.name], 50) if ref is not None else float("nan")
        fl = flops.get(v.bf16, flops.get(not v.bf16, 0))
        peak = peak_tflops["bf16" if v.bf16 else "fp32"]
        rows.append({
            "setting": setting.label, "provider": v.name, "batch": setting.batch,
            "precision": "bf16-autocast" if v.bf16 else "fp32",
            "fused_loss": int(v.fused_loss), "checkpoint": "+".join(v.checkpoint), "compile": int(v.compile),
            "fused_adam": int(v.fused_adam), "channels_last": int(v.channels_last),
            "p20_ms": round(percentile(times[v.name], 20), 2), "p50_ms": round(p50, 2),
            "p80_ms": round(percentile(times[v.name], 80), 2), "n_reps": len(times[v.name]),
            "images_per_s": round(setting.batch * 1e3 / p50, 2),
            "speedup_vs_reference": round(ref_p50 / p50, 3),
            "peak_mem_gb": round(peak_memory_gb(providers[v.name], 99_000), 3),
            "gflop_per_iter": round(fl / 1e9, 2), "tflops": round(fl / (p50 * 1e-3) / 1e12, 4),
            "peak_tflops": round(peak, 3), "mfu": round(fl / (p50 * 1e-3) / 1e12 / peak, 4),
            "build_s": round(build_s[v.name], 1), "shims": shims[v.name], **prov,
        })
    if profile_path is not None:
        write_profile(providers, setting, profile_path)
    del providers
    _free(device)
    return rows


def write_profile(providers: dict, setting: Setting, path: Path) -> None:
    """``torch.profiler`` tables (top ops by self CPU time) of one iteration of the reference and the fastui row."""
    from torch.profiler import ProfilerActivity, profile

    out = [f"# bench.step profile: {setting.label}, batch {setting.batch}; one iteration each after warm-up\n"]
    for name in [v.name for v in setting.variants if not v.compile]:
        p = providers[name]
        p.iteration(50_000)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if p.device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            p.iteration(50_001)
        key = "self_cuda_time_total" if p.device.type == "cuda" else "self_cpu_time_total"
        out.append(f"\n## {name}\n{prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=50)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(out))


def _print_rows(rows: list) -> None:
    cols = ["setting", "provider", "batch", "precision", "p50_ms", "images_per_s", "speedup_vs_reference",
            "peak_mem_gb", "mfu", "shims"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols), flush=True)


def main(argv: list | None = None) -> int:
    """Command line: see the module docstring and ``--help``."""
    ap = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions (CPU < 5 min, GPU < 3 min)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=str(RESULTS / "step.csv"), help="CSV to append rows to")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (warm-up timed separately)")
    ap.add_argument("--max-batch", action="store_true", help="GPU: largest batch that fits, reference vs fastui+ckpt")
    ap.add_argument("--max-batch-seconds", type=float, default=120.0, help="time bound of each max-batch search")
    ap.add_argument("--settings", default="auto", choices=["auto", "cpu", "gpu"],
                    help="which list of settings (auto: the device's; gpu on the CPU only makes sense with --smoke)")
    ap.add_argument("--only", default="", help="comma-separated setting labels to run (default: all)")
    ap.add_argument("--batch", type=int, default=0, help="override every setting's batch")
    ap.add_argument("--smoke", action="store_true",
                    help="the device's settings with tiny networks, batch 2, 2 repetitions (checks the code paths)")
    ap.add_argument("--profile", default="", help="write a torch.profiler table of the first setting here")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: on a shared, loaded machine OpenMP barriers make 2 threads ~10x "
                         "slower)")
    ap.add_argument("--adam", default="torch", choices=["torch", "apex", "deepspeed"],
                    help="optim.impl of the fastui rows: torch's (fused) Adam, apex's FusedAdam (CUDA) or DeepSpeed's "
                         "FusedAdam / DeepSpeedCPUAdam")
    ap.add_argument("--max-seconds", type=float, default=0.0, help="bound on each setting's timing loop (0: none)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench.step: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    gpu_like = args.settings == "gpu" or (args.settings == "auto" and device.type == "cuda")
    settings = (gpu_settings if gpu_like else cpu_settings)(args.quick, args.compile)
    if args.only:
        settings = [s for s in settings if s.label in args.only.split(",")]
    if args.adam != "torch":
        settings = [replace(s, variants=[v if v.reference else replace(v, name=f"{v.name}+{args.adam}_adam",
                                                                           adam=args.adam) for v in s.variants])
                    for s in settings]
    if args.smoke:
        from fastui import networks

        settings = [replace(s, arch=networks.tiny_arch(s.arch), batch=2, reps=2, warmup=1) for s in settings]
    if args.batch:
        settings = [replace(s, batch=args.batch) for s in settings]
    prov = provenance(device)
    peak = {"fp32": matmul_peak_tflops(device, torch.float32), "bf16": matmul_peak_tflops(device, torch.bfloat16)}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        sheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
        print(f"bench.step: measured matmul peak bf16 {peak['bf16']:.0f} TFLOP/s, fp32 {peak['fp32']:.0f} "
              f"(datasheet bf16 dense: {sheet})", flush=True)
    else:
        print(f"bench.step: measured CPU matmul peak fp32 {peak['fp32'] * 1e3:.0f} GFLOP/s, bf16 "
              f"{peak['bf16'] * 1e3:.0f} GFLOP/s", flush=True)
    all_rows = []
    for i, s in enumerate(settings):
        default_profile = device.type == "cpu" and not args.smoke and args.settings != "gpu"
        profile_path = args.profile or (str(RESULTS / "step_profile_cpu.txt") if default_profile else "")
        profile = Path(profile_path) if profile_path and i == 0 else None
        for attempt in range(3):  # out of memory with every provider resident: halve the batch (GPU)
            try:
                rows = run_setting(s, device, prov, peak, args.max_seconds or None, profile)
                break
            except (RuntimeError, torch.OutOfMemoryError) as err:
                if not _is_oom(err) or attempt == 2 or s.batch < 2:
                    raise
                print(f"bench.step: {s.label} out of memory at batch {s.batch}; retrying at {s.batch // 2}", flush=True)
                s = replace(s, batch=s.batch // 2)
                _free(device)
        _print_rows(rows)
        all_rows += rows
        append_csv(args.out, rows)
    if args.max_batch and device.type == "cuda":
        s = settings[0]
        ckpt = next(v for v in s.variants if v.checkpoint)
        rows = []
        for v in (s.variants[0], ckpt):
            provider = make_provider(s.arch, 8, v, device)
            b = largest_batch(provider, device, max_seconds=args.max_batch_seconds)
            del provider
            _free(device)
            rows.append({"setting": s.label, "provider": v.name, "batch": b, "precision": "bf16-autocast",
                         "metric": "largest_batch", **prov})
            print(f"bench.step: largest batch {s.label} {v.name}: {b}", flush=True)
        append_csv(Path(args.out).with_name(Path(args.out).stem + "_maxbatch.csv"), rows)
    print(f"bench.step: {len(all_rows)} rows -> {args.out} ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
