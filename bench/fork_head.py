"""Fork a run's checkpoint with a new conv discriminator head (another ``discriminator.depth``), so that a long run
can try a deeper head without starting over (bench/results/longer_config.md, "Session 9").

``python -m bench.fork_head CKPT OUT_RUN_DIR --depth D [--channels C] [--pretrain-steps N] [--batch B] [--pool P]
[--seed S]``

``CKPT`` is a torch-backend checkpoint directory of a ``discriminator.kind = "conv"`` run on Fashion-MNIST 32x32
(``RUN/checkpoints/ckpt-NNNNNNNNN``). It is copied to ``OUT_RUN_DIR/checkpoints/`` with the fake engine's head
replaced by a fresh :class:`fastui.train.models.PixelHead` of depth ``D`` (seeded), whose Adam state starts empty;
the fake score, the generator, the EMA, the data position and every other optimizer state carry over unchanged.
With ``--pretrain-steps N`` the new head is first trained alone (Adam lr 3e-4, betas 0 / 0.999, ``L_disc`` of MATH §3)
on real training images against one-step samples of the checkpoint's own (raw) generator, both noised with the
engine's log-normal sigma, so that the GAN term does not start from a random head. Then resume with the new depth:

    python -m fastui.train --config CFG --resume auto --run.out_dir=PARENT --run.name=NAME --discriminator.depth=D ...

Nothing is written to ``OUT_RUN_DIR`` unless every step succeeds (the checkpoint is assembled in a temporary
directory and renamed into place).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from bench.disc_probe import one_step_samples, real_images
from fastui.teachers import load_teacher
from fastui.train.models import PixelHead
from fastui.train.refresh import train_head_alone

SHAPE = (1, 32, 32)


def pretrain_head(head: PixelHead, generator_state: dict, *, steps: int, batch: int, seed: int, pool: int = 4096,
                  log_every: int = 100) -> float:
    """Train ``head`` alone for ``steps`` Adam steps: real images vs the generator's one-step samples (sigma_init
    2.5), with the engine's own loop (:func:`fastui.train.refresh.train_head_alone`). Returns the mean ``L_disc`` of
    the last (up to 50) steps (2 ln 2 = 1.386 is chance)."""
    torch.manual_seed(seed)
    gen = load_teacher("demo")
    gen.load_state_dict(generator_state)
    gen.eval()
    real, real_c = real_images(pool, seed)
    fake = one_step_samples(gen, real_c[torch.randperm(pool)]).float()
    _, last = train_head_alone(head, real, fake, steps=steps, batch=batch, lr=3e-4,
                               generator=torch.Generator().manual_seed(seed), log_every=log_every)
    return last


def fork(ckpt: Path, out_run: Path, *, depth: int, channels: int = 64, pretrain_steps: int = 0, batch: int = 64,
         seed: int = 0, pool: int = 4096) -> Path:
    """Write ``out_run/checkpoints/<ckpt name>`` with a new head; returns its path."""
    fake_pt = ckpt / "fake" / "fake.pt"
    gen_pt = ckpt / "generator" / "generator.pt"
    for p in (ckpt / "meta.json", fake_pt, gen_pt):
        if not p.is_file():
            raise FileNotFoundError(f"{p} missing: not a complete torch-backend checkpoint directory")
    dest = out_run / "checkpoints" / ckpt.name
    if dest.exists():
        raise FileExistsError(f"{dest} exists; pick another OUT_RUN_DIR")
    state = torch.load(fake_pt, map_location="cpu", weights_only=True)
    module, optim = state["module"], state["optimizer"]
    old_head = [k for k in module if k.startswith("head.")]
    if not old_head:
        raise ValueError(f"{fake_pt} has no conv discriminator head (discriminator.kind must be 'conv')")
    groups = optim["param_groups"]
    n_params = sum(len(g["params"]) for g in groups)
    n_old = sum(1 for k in old_head if k.endswith((".weight", ".bias")))
    keep = n_params - n_old  # the head's parameters come last (FakeScoreWithDisc registers fake, then head)
    # one group, or two with the head's own (discriminator.lr) last
    if not (len(groups) == 1 or (len(groups) == 2 and len(groups[1]["params"]) == n_old)):
        raise ValueError("expected one optimizer parameter group in the fake engine, or two with the head's last")

    torch.manual_seed(seed)
    head = PixelHead(SHAPE, channels, depth)
    if pretrain_steps:
        gen_state = torch.load(gen_pt, map_location="cpu", weights_only=True)["module"]
        pretrain_head(head, gen_state, steps=pretrain_steps, batch=batch, seed=seed, pool=pool)
    new_head = {f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()}
    module = {k: v for k, v in module.items() if not k.startswith("head.")} | new_head
    n_new = sum(1 for _ in head.parameters())
    optim["state"] = {i: s for i, s in optim["state"].items() if int(i) < keep}
    if len(groups) == 1:
        groups[0]["params"] = list(range(keep + n_new))
    else:
        groups[0]["params"], groups[1]["params"] = list(range(keep)), list(range(keep, keep + n_new))
    state["module"], state["optimizer"] = module, optim

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ckpt.name}.", dir=dest.parent))
    try:
        shutil.copytree(ckpt, tmp, dirs_exist_ok=True)
        torch.save(state, tmp / "fake" / "fake.pt")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"fork_head: {ckpt} -> {dest}: head depth {depth} ({n_new} tensors, {n_old} dropped), "
          f"{keep} optimizer states kept", flush=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt", type=Path, help="checkpoint directory (RUN/checkpoints/ckpt-NNNNNNNNN)")
    p.add_argument("out_run", type=Path, help="run directory of the fork (gets checkpoints/<name>)")
    p.add_argument("--depth", type=int, required=True, help="discriminator.depth of the new head (1..8)")
    p.add_argument("--channels", type=int, default=64, help="discriminator.channels (default 64)")
    p.add_argument("--pretrain-steps", type=int, default=0, help="Adam steps of the head alone first (0 = none)")
    p.add_argument("--batch", type=int, default=64, help="pretraining batch (real and fake each)")
    p.add_argument("--pool", type=int, default=4096, help="real images and generator samples drawn for pretraining")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 1 <= args.depth <= 8 or args.channels < 1 or args.pretrain_steps < 0 or args.batch < 1 \
            or args.pool < 1:
        p.error("--depth must be in 1..8, --channels, --batch and --pool >= 1, --pretrain-steps >= 0")
    try:
        fork(args.ckpt, args.out_run, depth=args.depth, channels=args.channels, pretrain_steps=args.pretrain_steps,
             batch=args.batch, seed=args.seed, pool=args.pool)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"fork_head: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
