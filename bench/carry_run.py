"""Move a resumable run's newest checkpoint, and some real images, between this machine and a lent GPU machine.

Why: issue 7's longer configuration needs one long trajectory, and the CPU sessions that continue it
(``bench/cpu_long.sh``) make ~10 images/s where a lent H100 makes ~650. So a GPU session should continue the CPU's
trajectory, not start another, and hand the result back. The device tool limits what travels: 64 MiB of working tree
out (the tracked files take ~26 MB of it), files back of at most 16 MiB each. A checkpoint of
``configs/demo_fmnist_gpu.toml`` is 48 MB (parameters, Adam moments, EMA) and the Fashion-MNIST training images 26 MB,
so ``pack`` writes

- the newest complete checkpoint as one xz stream split into parts of at most ``--part-mib`` MiB: parameters, EMA,
  RNG states and the data position exact; the Adam second moments in bf16 (relative rounding <= 2^-8, so <= 2^-9 in
  the step sizes after the square root; ``--exact-moments`` keeps fp32); the first moments dropped where the group's
  ``beta1`` is 0 (Adam then overwrites them with the gradient before using them, so zeros resume bit-identically, as
  long as the resumed run also has ``beta1 = 0``) and otherwise in bf16 too;
- with ``--fmnist ROOT``, the first ``--images`` Fashion-MNIST training images and labels as ``.xz`` IDX files
  (``fastui shards fashion-mnist --root OUT/fmnist`` reads them), since other shards than the run's need
  ``--data.resume_position=false`` anyway (``bench/cpu_long.sh`` adds it when the shard counts differ);
- ``manifest.json``: the checkpoint's meta, each part's size and sha256.

``unpack`` checks the parts and writes the checkpoint into ``RUN_DIR/checkpoints/`` the way the engine does (a
temporary directory, ``meta.json`` last, one rename), refusing when the run already holds a checkpoint as new or newer.
A run made by ``unpack`` remembers the checkpoint it started from (``carried_from.json``), a pack of it carries that
name back, and the return ``unpack`` refuses (unless ``--force``) when the destination's newest checkpoint is not that
one: the CPU run went on meanwhile, and taking the pack would fork its trajectory. So stop ``bench/cpu_long.sh`` before
packing, and do not start it again until the GPU's pack is back. Each pack has an id (the sha256 of its stream); the
run it came from lists the ids it has packed since its origin (in ``carried_from.json``), an unpacked checkpoint keeps
its pack's id (``carried.json`` in the checkpoint), and a later pack of the same run is also accepted on top of an
earlier one of its packs (the GPU trained on after a first pack, and both came back, in order). The run's
``cpu_long.plan`` (where ``bench/cpu_long.sh``'s stage 4 ends and its overrides) travels too: ``unpack`` writes it where
the destination has none and refuses (unless ``--force``, which keeps the destination's) where the destination's
differs, so that the GPU continues a trajectory to the plan it was started with. A run directory that holds only a
plan (no checkpoint yet) packs into a pack without a checkpoint, which starts the trajectory where it is unpacked
(into a run without checkpoints only). Errors write nothing (exit 2).

Usage::

    python -m bench.carry_run pack runs/cpu_long/refresh .carry/cont --fmnist /usr/share/datasets/fashion-mnist
    python -m bench.carry_run unpack .carry/cont runs/cpu_long/refresh          # on the GPU machine, then train
    python -m bench.carry_run pack runs/cpu_long/refresh $OUT/ckpt               # there, after training
    python -m bench.carry_run unpack <files_at>/ckpt runs/cpu_long/refresh       # back here

Only single-process checkpoints of the torch backend (``meta.json``: world 1, backend torch) are supported.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import shutil
import sys
from pathlib import Path

import torch

FORMAT, VERSION = "fastui-carry", 1
ORIGIN = "carried_from.json"  # in a run unpacked from a pack: the checkpoint it started from, and its packs since
CARRIED = "carried.json"  # in a checkpoint unpacked from a pack: that pack's id
PLAN = "cpu_long.plan"  # bench/cpu_long.sh's stage-4 end and overrides, saved in the run directory
ENGINES = ("generator", "fake")


class CarryError(Exception):
    """A pack or unpack that cannot go ahead (nothing written)."""


def _pack_optimizer(state: dict, exact: bool) -> tuple[dict, int]:
    """The optimizer state dict with its moments shrunk; returns it and the number of first moments dropped."""
    beta1 = {i: g["betas"][0] for g in state["param_groups"] for i in g["params"]}
    dropped, packed = 0, {}
    for i, s in state["state"].items():
        s = dict(s)
        if beta1[i] == 0 and "exp_avg" in s:
            del s["exp_avg"]
            dropped += 1
        if not exact:
            s = {k: v.to(torch.bfloat16) if k.startswith("exp_avg") else v for k, v in s.items()}
        packed[i] = s
    return {"state": packed, "param_groups": state["param_groups"]}, dropped


def _unpack_optimizer(state: dict) -> dict:
    out = {}
    for i, s in state["state"].items():
        s = {k: v.float() if k.startswith("exp_avg") else v for k, v in s.items()}
        if "exp_avg" not in s and "exp_avg_sq" in s:
            s["exp_avg"] = torch.zeros_like(s["exp_avg_sq"])
        out[i] = s
    return {"state": out, "param_groups": state["param_groups"]}


def _latest(run: Path) -> Path | None:
    from fastui.train.checkpoint import find_latest

    return find_latest(run / "checkpoints")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _continues(have: Path | None, base: dict) -> bool:
    """Whether ``have`` (a run's newest checkpoint) is where a pack with ``continues: base`` goes on from: the
    checkpoint its run started from, or one unpacked from an earlier pack of that same run."""
    if have is None:
        return False
    if have.name == base["checkpoint"]:
        return True
    carried = have / CARRIED
    return carried.is_file() and json.loads(carried.read_text()).get("pack") in base.get("packs", [])


def _read_fmnist(root: Path, images: int):
    """The first ``images`` training images ([N, 28, 28] uint8) and labels of Fashion-MNIST at ``root``."""
    from fastui.data.importers import DataError, fashion_mnist

    try:
        x, y, _ = fashion_mnist(root, "train")
    except DataError as e:
        raise CarryError(str(e)) from None
    if not 0 < images <= len(x):
        raise CarryError(f"--images must be in 1..{len(x)}, got {images}")
    return x[:images, ..., 0], y[:images].astype("uint8")


def _write_fmnist(x, y, out: Path) -> dict:
    """``x``, ``y`` as .xz IDX files in ``out`` (what ``fastui shards fashion-mnist --root OUT`` reads)."""
    out.mkdir(parents=True)
    sizes = {}
    for name, arr in (("train-images-idx3-ubyte.xz", x), ("train-labels-idx1-ubyte.xz", y)):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (out / name).write_bytes(lzma.compress(header + arr.tobytes(), preset=9))
        sizes[name] = (out / name).stat().st_size
    return {"images": len(x), "files": sizes}


def _write_pack(out: Path, manifest: dict, parts: list[bytes], subset) -> None:
    """``parts`` (listed in ``manifest``), the images and ``manifest.json`` into ``out``: a temporary directory, then
    one rename, so that an error leaves nothing."""
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for i, data in enumerate(parts):
            name = f"ckpt.xz.{i:03d}"
            (tmp / name).write_bytes(data)
            manifest["parts"].append({"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        if subset is not None:
            manifest["fmnist"] = _write_fmnist(*subset, tmp / "fmnist")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pack(run: Path, out: Path, part_mib: float, exact: bool, fmnist: Path | None, images: int) -> int:
    if not 0 < part_mib <= 16:
        raise CarryError(f"--part-mib must be in (0, 16] (the device tool returns files of at most 16 MiB), got "
                         f"{part_mib}")
    if out.exists() and any(out.iterdir()):
        raise CarryError(f"{out} is not empty: nothing written")
    ckpt = _latest(run)
    if ckpt is None:
        if not (run / PLAN).is_file():
            raise CarryError(f"no complete checkpoint in {run / 'checkpoints'}, and no {PLAN} there to start a new "
                             "trajectory with (bench/gpu_continue.sh's header shows one)")
        return _pack_fresh(run, out, fmnist, images)
    meta = json.loads((ckpt / "meta.json").read_text())
    if meta.get("world") != 1 or meta.get("backend") != "torch":
        raise CarryError(f"{ckpt}: only single-process torch-backend checkpoints travel (world {meta.get('world')}, "
                         f"backend {meta.get('backend')})")
    subset = _read_fmnist(fmnist, images) if fmnist is not None else None  # bad input fails before any writing
    engines, dropped = {}, 0
    for name in ENGINES:
        state = torch.load(ckpt / name / f"{name}.pt", map_location="cpu", weights_only=True)
        state["optimizer"], n = _pack_optimizer(state["optimizer"], exact)
        engines[name], dropped = state, dropped + n
    per_rank = torch.load(ckpt / "rank00000.pt", map_location="cpu", weights_only=False)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, "meta": meta, "engines": engines, "per_rank": per_rank}, buf)
    blob = lzma.compress(buf.getvalue(), preset=1)
    part = int(part_mib * 2**20)
    manifest = {"format": FORMAT, "version": VERSION, "id": hashlib.sha256(blob).hexdigest(), "checkpoint": ckpt.name,
                "source": str(run), "meta": meta, "moments": "fp32" if exact else "bf16",
                "first_moments_dropped": dropped, "parts": []}
    origin = run / ORIGIN
    lineage = json.loads(origin.read_text()) if origin.is_file() else None
    if lineage is not None:  # this run was unpacked from a pack: what it continued (and packed since) travels back
        manifest["continues"] = lineage
    if (run / PLAN).is_file():
        manifest["plan"] = (run / PLAN).read_text()
    _write_pack(out, manifest, [blob[k:k + part] for k in range(0, len(blob), part)], subset)
    if lineage is not None and manifest["id"] not in lineage.setdefault("packs", []):
        lineage["packs"].append(manifest["id"])
        _write_json(origin, lineage)
    raw = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    print(f"carry_run: {ckpt} ({meta['images']} images, {raw / 1e6:.1f} MB) -> {out}: {len(manifest['parts'])} "
          f"part(s), {len(blob) / 1e6:.1f} MB (moments {manifest['moments']}, {dropped} first moments dropped at "
          f"beta1 = 0)" + (f"; Fashion-MNIST {images} images, {sum(manifest['fmnist']['files'].values()) / 1e6:.1f} "
                           f"MB" if subset is not None else ""))
    return 0


def _pack_fresh(run: Path, out: Path, fmnist: Path | None, images: int) -> int:
    """A pack that starts a trajectory elsewhere: no checkpoint, the run's plan (and the images)."""
    subset = _read_fmnist(fmnist, images) if fmnist is not None else None
    plan = (run / PLAN).read_text()
    manifest = {"format": FORMAT, "version": VERSION, "id": hashlib.sha256(plan.encode()).hexdigest(),
                "checkpoint": None, "source": str(run), "plan": plan, "parts": []}
    _write_pack(out, manifest, [], subset)
    print(f"carry_run: {run} has no checkpoint: {out} starts a new trajectory to its plan {plan!r}"
          + (f"; Fashion-MNIST {images} images" if subset is not None else ""))
    return 0


def _unpack_fresh(src: Path, manifest: dict, run: Path) -> int:
    """A pack without a checkpoint: write its plan into a run that has no checkpoint yet (the trajectory starts)."""
    have = _latest(run)
    plan, here = manifest.get("plan"), run / PLAN
    if have is not None:
        raise CarryError(f"{src} starts a new trajectory (no checkpoint), but {run} already holds {have.name}: nothing "
                         "written")
    if plan is None:
        raise CarryError(f"{src}: a pack without a checkpoint must carry a plan")
    if here.is_file() and here.read_text() != plan:
        raise CarryError(f"{src} starts a trajectory to the plan {plan!r}, but {here} reads {here.read_text()!r}: "
                         "nothing written")
    run.mkdir(parents=True, exist_ok=True)
    if not here.is_file():
        here.write_text(plan)
    print(f"carry_run: {src} -> {run}: no checkpoint, a new trajectory to the plan {plan!r}")
    return 0


def unpack(src: Path, run: Path, force: bool = False) -> int:
    try:
        manifest = json.loads((src / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise CarryError(f"{src / 'manifest.json'}: {e}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CarryError(f"{src}: not a {FORMAT} v{VERSION} pack")
    if manifest.get("checkpoint") is None:
        return _unpack_fresh(src, manifest, run)
    meta = manifest["meta"]
    have = _latest(run)
    have_meta = json.loads((have / "meta.json").read_text()) if have is not None else None
    if have_meta is not None and have_meta["iteration"] >= meta["iteration"]:
        raise CarryError(f"{run} already holds {have.name} (iteration {have_meta['iteration']}), as new as the pack's "
                         f"(iteration {meta['iteration']}): nothing written")
    base = manifest.get("continues")
    if base is not None and not force and not _continues(have, base):
        raise CarryError(f"the pack continues {base['checkpoint']} of {base['source']}, but the newest checkpoint of "
                         f"{run} is {have.name if have else 'none'}, neither that one nor one of the packs made since "
                         "from the same run: the run went on meanwhile (or is another one), and unpacking would fork "
                         "its trajectory. Nothing written; --force takes the pack anyway")
    plan, here = manifest.get("plan"), run / PLAN
    here_plan = here.read_text() if here.is_file() else None
    if plan is not None and here_plan is not None and here_plan != plan and not force:
        raise CarryError(f"the pack's run was trained to the plan {plan!r} of bench/cpu_long.sh, but {here} reads "
                         f"{here_plan!r}: nothing written; --force takes the pack and keeps {here}")
    blob = b""
    for p in manifest["parts"]:
        data = (src / p["name"]).read_bytes() if (src / p["name"]).is_file() else b""
        if len(data) != p["bytes"] or hashlib.sha256(data).hexdigest() != p["sha256"]:
            raise CarryError(f"{src / p['name']}: missing or corrupt (size or sha256 differs from the manifest)")
        blob += data
    payload = torch.load(io.BytesIO(lzma.decompress(blob)), map_location="cpu", weights_only=False)
    ckpt_dir = run / "checkpoints"
    final = ckpt_dir / f"ckpt-{meta['iteration']:09d}"
    tmp = ckpt_dir / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, state in payload["engines"].items():
            (tmp / name).mkdir(parents=True)
            state["optimizer"] = _unpack_optimizer(state["optimizer"])
            torch.save(state, tmp / name / f"{name}.pt")
        torch.save(payload["per_rank"], tmp / "rank00000.pt")
        if "id" in manifest:
            (tmp / CARRIED).write_text(json.dumps({"pack": manifest["id"], "source": manifest["source"]}, indent=1))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(final, ignore_errors=True)  # an incomplete one (no meta.json), which resume ignores anyway
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if plan is not None and here_plan is None:
        here.write_text(plan)
    if base is None:  # a first move: what a pack of this run's later checkpoints continues
        _write_json(run / ORIGIN, {"checkpoint": final.name, "iteration": meta["iteration"],
                                   "source": manifest["source"], "packs": []})
    else:
        (run / ORIGIN).unlink(missing_ok=True)
    note = f", {manifest['first_moments_dropped']} first moments zero (exact for beta1 = 0)" \
        if manifest["first_moments_dropped"] else ""
    print(f"carry_run: {src} -> {final} ({meta['images']} images, moments {manifest['moments']}{note})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.carry_run", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="newest checkpoint of RUN_DIR (+ Fashion-MNIST images) -> OUT_DIR")
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--part-mib", type=float, default=15.0, help="largest part (the device tool returns <= 16 MiB)")
    p.add_argument("--exact-moments", action="store_true", help="keep the Adam moments in fp32 (larger)")
    p.add_argument("--fmnist", type=Path, default=None, help="Fashion-MNIST folder: also pack --images of them")
    p.add_argument("--images", type=int, default=20000, help="first N training images with --fmnist (20000)")
    u = sub.add_parser("unpack", help="a pack -> a complete checkpoint of RUN_DIR")
    u.add_argument("src", type=Path)
    u.add_argument("run", type=Path)
    u.add_argument("--force", action="store_true",
                   help="unpack a returned pack although the run's newest checkpoint is not the one it continued, "
                        "or although the run's cpu_long.plan differs from the pack's (the run keeps its own)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "pack":
            return pack(a.run, a.out, a.part_mib, a.exact_moments, a.fmnist, a.images)
        return unpack(a.src, a.run, a.force)
    except CarryError as e:
        print(f"carry_run: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
