"""Other EMA settings on one training trajectory: record a demo run's raw generator, replay EMAs of it afterwards.

``python -m bench.ema_replay record RAW_DIR [fastui demo arguments]`` runs ``fastui demo`` and saves the generator's
raw parameters (fp32) to ``RAW_DIR/00000.pt`` (the initial generator) and ``RAW_DIR/NNNNN.pt`` after each of its
EMA updates (one per generator step; ~7 MB each for the demo teacher).

``python -m bench.ema_replay export RAW_DIR --like GEN_DIR --out OUT HALFLIFE:RAMPUP [...]`` replays the EMA of
``fastui.train.schedule.ema_beta`` (``ema.halflife_images``, ``ema.rampup``) over the recorded parameters for each
setting and writes ``OUT/ema_hl<HALFLIFE>_ru<RAMPUP>/`` as a generator checkpoint directory shaped like ``GEN_DIR``
(the run's ``generator_ema``; ``--batch``: the run's images per generator step, default 32), to be scored
with ``fastui demo --fid-of``. The run's own setting replays its exported generator exactly (printed: the largest
difference).

The replay counts one generator step per iteration from the first (``schedule.warmup_images = 0``, as in the demo's
configs); for another schedule its ramp-up would differ from the run's (the printed difference shows it).

Seed-to-seed spread of the demo's FID (84-101 over four seeds) hides differences of a few points between settings
tried on separate runs; EMA settings replayed on one trajectory are compared on the same training noise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def _params(module) -> list[torch.Tensor]:
    return [p.detach().float().clone() for p in module.parameters()]


def record(raw_dir: Path, demo_args: list[str]) -> int:
    """Run ``fastui demo`` with the generator's parameters saved at the start and after every EMA update."""
    from fastui import demo
    from fastui.train import ema as ema_mod

    raw_dir.mkdir(parents=True, exist_ok=True)
    if any(raw_dir.glob("*.pt")):
        print(f"bench.ema_replay: {raw_dir} already holds a recording; choose an empty directory", file=sys.stderr)
        return 2
    init, update = ema_mod.Ema.__init__, ema_mod.Ema.update
    count = [0]

    def init_and_save(self, module):
        init(self, module)
        torch.save(_params(module), raw_dir / "00000.pt")

    def update_and_save(self, beta):
        update(self, beta)
        count[0] += 1
        torch.save(_params(self.module), raw_dir / f"{count[0]:05d}.pt")

    ema_mod.Ema.__init__, ema_mod.Ema.update = init_and_save, update_and_save
    try:
        code = demo.main(demo_args)
    finally:
        ema_mod.Ema.__init__, ema_mod.Ema.update = init, update
    return code


def replay(files: list[Path], batch: int, settings: list[tuple[float, float]]) -> dict:
    """``{(halflife, rampup): [shadow tensors]}``: the EMAs of the recorded parameters (``files[0]`` = initial)."""
    from fastui.train.schedule import ema_beta

    init = torch.load(files[0])
    shadows = {s: [t.clone() for t in init] for s in settings}
    for k, f in enumerate(files[1:], 1):
        raw = torch.load(f)
        for (halflife, rampup), shadow in shadows.items():
            torch._foreach_lerp_(shadow, raw, 1.0 - ema_beta(k * batch, batch, halflife, rampup))
    return shadows


def export(raw_dir: Path, like: Path, out: Path, settings: list[tuple[float, float]], batch: int) -> int:
    from fastui.teachers import load_checkpoint, save_checkpoint

    files = sorted(raw_dir.glob("[0-9][0-9][0-9][0-9][0-9].pt"))
    if len(files) < 2 or files[0].name != "00000.pt":
        print(f"bench.ema_replay: {raw_dir} holds no recording (00000.pt and at least one update)", file=sys.stderr)
        return 2
    net = load_checkpoint(like)
    exported = _params(net)
    for (halflife, rampup), shadow in replay(files, batch, settings).items():
        if [t.shape for t in shadow] != [t.shape for t in exported]:
            print(f"bench.ema_replay: {like} is not the recorded generator's architecture", file=sys.stderr)
            return 2
        with torch.no_grad():
            for p, v in zip(net.parameters(), shadow, strict=True):
                p.copy_(v)
        path = save_checkpoint(net, out / f"ema_hl{halflife:g}_ru{rampup:g}")
        diff = max(float((a - b).abs().max()) for a, b in zip(shadow, exported, strict=True))
        print(f"{path}: {len(files) - 1} updates, max |difference| to {like}: {diff:.3g}")
    return 0


def _setting(text: str) -> tuple[float, float]:
    try:
        halflife, rampup = (float(x) for x in text.split(":"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected HALFLIFE:RAMPUP (e.g. 2000:0.25), got {text!r}") from e
    if halflife <= 0 or rampup < 0:
        raise argparse.ArgumentTypeError(f"halflife must be > 0 and rampup >= 0, got {text!r}")
    return halflife, rampup


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["record"]:
        if len(argv) < 2:
            print("usage: python -m bench.ema_replay record RAW_DIR [fastui demo arguments]", file=sys.stderr)
            return 2
        return record(Path(argv[1]), argv[2:])
    p = argparse.ArgumentParser(prog="python -m bench.ema_replay export", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["export"])
    p.add_argument("raw_dir", type=Path)
    p.add_argument("--like", type=Path, required=True, help="the run's exported generator (architecture, buffers)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch", type=int, default=32, help="images per generator step of the recorded run (default 32)")
    p.add_argument("settings", nargs="+", type=_setting, metavar="HALFLIFE:RAMPUP")
    a = p.parse_args(argv)
    return export(a.raw_dir, a.like, a.out, a.settings, a.batch)


if __name__ == "__main__":
    sys.exit(main())
