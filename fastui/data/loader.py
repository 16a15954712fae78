"""Streaming loader over fastui tar shards: multi-rank, multi-worker, shuffle buffer, exact resume.

Why not webdataset's pipeline state: its shuffle buffers and shard iterators keep hidden RNG state per worker, so a
resumed run cannot continue the same sample sequence. Here the sequence is an explicit function of the manifest
and ``(seed, epoch, rank, worker)``; webdataset is only used to read tar members and group them into samples.

The sample sequence (one per rank and worker ``w`` of ``W = max(1, num_workers)``):

1. Shards of epoch ``e``.
   ``resampled=False``: a permutation of all shards drawn from ``(seed, e)``, shared by every rank; rank ``r`` takes
   every ``world_size``-th shard from position ``r``, worker ``w`` every ``W``-th of those. Within an epoch ranks
   and workers therefore read disjoint shards and together cover every sample exactly once.
   ``resampled=True`` (training): each (rank, worker) draws ``ceil(num_shards / (world_size * W))`` shards with
   replacement from ``(seed, e, rank, w)``, for virtual epochs ``e = 0, 1, ...`` forever.
2. The worker's stream is its shards' samples in file order, stream positions ``0..L-1``.
3. A shuffle buffer of ``shuffle_buffer`` slots (RNG from ``(seed, e, rank, w)``) permutes the stream: push each
   position; once full, swap a random slot to the end and emit it; at the end drain the buffer the same way. The
   permutation depends only on ``L`` and the RNG, so it is computed on positions without touching any data.
4. Samples are read in stream order, decoded (PNG -> uint8) in the worker and batched in the worker. A sample that
   is missing (truncated shard) or undecodable is skipped and counted (``strict=True``: raises instead).

The main process takes batches from the workers in a fixed round-robin order (skipping workers that finished the
epoch). Position = (round-robin pointer, per worker: (epoch, number of permuted positions consumed)). Restoring a
position recomputes the permutation and skips consumed positions without decoding them; shards holding no pending
sample are not even opened, so a resume costs at most about one shard per worker of extra reading.
"""

from __future__ import annotations

import collections
import math
import os
from pathlib import Path

import numpy as np
import torch

from fastui.data.importers import DataError
from fastui.data.writer import read_manifest

STATE_VERSION = 1


def normalize(
    images_uint8: torch.Tensor, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Move uint8 images to ``device`` and map [0, 255] -> [-1, 1] there (4x less host->device traffic than
    normalising on the host).

    Shapes:
        images_uint8 [B, C, H, W] uint8 -> [B, C, H, W] ``dtype`` on ``device``.
    """
    if images_uint8.dtype != torch.uint8:
        # Float input would be scaled twice (and modified in place below): refuse instead of guessing its range.
        raise TypeError(f"normalize expects uint8 images, got {images_uint8.dtype}")
    x = images_uint8.to(device, non_blocking=True) if device is not None else images_uint8
    return x.to(dtype).mul_(2.0 / 255.0).sub_(1.0)


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size) from the arguments, else torch.distributed, else ``RANK``/``WORLD_SIZE``, else (0, 1)."""
    if rank is not None and world_size is not None:
        r, w = int(rank), int(world_size)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if rank is not None:
        r = int(rank)
    if world_size is not None:
        w = int(world_size)
    if not 0 <= r < w:
        raise ValueError(f"rank {r} outside world_size {w}")
    return r, w


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def shuffle_buffer_order(length: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """Emission order of a shuffle buffer fed with positions ``0..length-1`` (module docstring, step 3).

    Returns:
        int64 [length], a permutation; element ``i`` is emitted at step ``i``. Each emitted position is at most
        ``buffer - 1`` ahead of the step, so reading in stream order needs at most ``buffer`` samples in memory.
    """
    if buffer <= 1 or length <= 1:
        return np.arange(length, dtype=np.int64)
    # Buffer occupancy at each emission: full (``buffer``) while streaming, then shrinking by one while draining.
    # It depends only on (length, buffer), so every random slot is drawn up front in one vectorised call.
    streaming = max(0, length - buffer + 1)
    drain_from = min(buffer - 1, length)
    sizes = np.concatenate([np.full(streaming, buffer), np.arange(drain_from, 0, -1)]).astype(np.int64)
    picks = np.minimum((rng.random(length) * sizes).astype(np.int64), sizes - 1).tolist()
    out = np.empty(length, dtype=np.int64)
    buf: list[int] = []
    k = 0
    for pos in range(length):
        buf.append(pos)
        if len(buf) == buffer:
            j = picks[k]
            buf[j], buf[-1] = buf[-1], buf[j]
            out[k] = buf.pop()
            k += 1
    while buf:
        j = picks[k]
        buf[j], buf[-1] = buf[-1], buf[j]
        out[k] = buf.pop()
        k += 1
    return out


class _Plan:
    """The deterministic sample sequence of one rank (module docstring, steps 1-3). Picklable."""

    def __init__(
        self,
        manifest: dict,
        root: Path,
        seed: int,
        rank: int,
        world_size: int,
        workers: int,
        resampled: bool,
        shuffle_buffer: int,
    ):
        self.counts = [int(s["count"]) for s in manifest["shards"]]
        self.first = [int(s["first_index"]) for s in manifest["shards"]]
        self.paths = [str(root / s["name"]) for s in manifest["shards"]]
        self.image = manifest["image"]
        self.seed, self.rank, self.world_size, self.workers = seed, rank, world_size, workers
        self.resampled, self.shuffle_buffer = resampled, shuffle_buffer

    def shards(self, epoch: int, worker: int) -> list[int]:
        n = len(self.counts)
        if self.resampled:
            k = max(1, math.ceil(n / (self.world_size * self.workers)))
            return [int(s) for s in _rng(self.seed, 1, epoch, self.rank, worker).integers(0, n, size=k)]
        perm = _rng(self.seed, 2, epoch).permutation(n)
        return [int(s) for s in perm[self.rank :: self.world_size][worker :: self.workers]]

    def order(self, epoch: int, worker: int, shards: list[int]) -> np.ndarray:
        length = sum(self.counts[s] for s in shards)
        return shuffle_buffer_order(length, self.shuffle_buffer, _rng(self.seed, 3, epoch, self.rank, worker))


class _Stats:
    def __init__(self, skipped_samples: int = 0, skipped_shards: int = 0):
        self.skipped_samples, self.skipped_shards = skipped_samples, skipped_shards

    def as_tuple(self) -> tuple[int, int]:
        return self.skipped_samples, self.skipped_shards


class _EpochReader:
    """Serves the samples of one worker-epoch by stream position, reading shards sequentially and lazily.

    ``get(pos)`` returns the raw sample dict, or None when the sample is missing (its shard is truncated, missing,
    or lacks the key). Only positions in ``pending`` are kept in memory; shards with no pending position are never
    opened (fast-forward after a resume).
    """

    def __init__(self, plan: _Plan, shards: list[int], pending: np.ndarray, stats: _Stats, strict: bool):
        self.plan, self.shards, self.stats, self.strict = plan, shards, stats, strict
        self.offsets = np.concatenate([[0], np.cumsum([plan.counts[s] for s in shards])]).astype(np.int64)
        self.pending = pending  # bool [L]
        self.cache: dict[int, dict] = {}
        self.slot = -1  # index into shards of the shard being read; all slots < self.slot are finished
        self.iter = None
        self.read_in_slot = 0

    def _open(self, slot: int):
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        path = self.plan.paths[self.shards[slot]]

        def files():
            with open(path, "rb") as f:
                for item in tar_file_iterator(f):
                    item["__url__"] = path
                    yield item

        return group_by_keys(files())

    def _advance(self) -> bool:
        """Read one more sample of the current shard (opening the next shard with pending samples as needed)."""
        while True:
            if self.iter is None:
                self.slot += 1
                while (
                    self.slot < len(self.shards)
                    and not self.pending[self.offsets[self.slot] : self.offsets[self.slot + 1]].any()
                ):
                    self.slot += 1
                if self.slot >= len(self.shards):
                    return False
                self.iter, self.read_in_slot = self._open(self.slot), 0
            try:
                sample = next(self.iter)
            except StopIteration:
                expected = self.plan.counts[self.shards[self.slot]]
                if self.read_in_slot < expected:
                    # A tar cut exactly at a block boundary ends "cleanly": only the manifest count reveals it.
                    self._shard_failed(EOFError(f"ended after {self.read_in_slot} of {expected} samples"))
                self.iter = None
                continue
            except Exception as exc:  # noqa: BLE001 - any tar/gzip/read error means a corrupt shard
                self._shard_failed(exc)
                continue
            self.read_in_slot += 1
            shard = self.shards[self.slot]
            try:
                local = int(sample["__key__"]) - self.plan.first[shard]
            except ValueError:
                continue
            if 0 <= local < self.plan.counts[shard]:
                pos = int(self.offsets[self.slot]) + local
                if self.pending[pos]:
                    self.cache[pos] = sample
            return True

    def _shard_failed(self, exc: Exception) -> None:
        self.iter = None
        path = self.plan.paths[self.shards[self.slot]]
        if self.strict:
            raise DataError(f"corrupt or unreadable shard {path}: {exc}") from exc
        self.stats.skipped_shards += 1

    def get(self, pos: int) -> dict | None:
        slot_of_pos = int(np.searchsorted(self.offsets, pos, side="right")) - 1
        while pos not in self.cache and self.slot <= slot_of_pos:
            if self.slot == slot_of_pos and self.iter is None:
                break  # the shard holding pos is finished (or failed) without it
            if not self._advance():
                break
        self.pending[pos] = False
        return self.cache.pop(pos, None)


def _decode(sample: dict, image_info: dict) -> tuple[np.ndarray, int]:
    from fastui.data.importers import decode_image

    image = decode_image(sample["png"], sample.get("__key__", ""))
    expected = (image_info["height"], image_info["width"], image_info["channels"])
    if image.shape != expected:
        raise DataError(f"sample {sample.get('__key__')}: image shape {image.shape}, manifest says {expected}")
    return image, int(sample["cls"])


def _worker_stream(
    plan: _Plan,
    worker: int,
    start: tuple[int, int],
    done: bool,
    batch_size: int,
    strict: bool,
    drop_last: bool,
    stats0: tuple[int, int],
):
    """Generator run inside one worker: yields batch dicts with bookkeeping keys ``_w``, ``_pos``, ``_stats``,
    and finally (epoch mode) an end marker ``{"_w", "_end", "_stats"}``."""
    stats = _Stats(*stats0)
    if done:
        yield {"_w": worker, "_end": True, "_stats": stats.as_tuple()}
        return
    epoch, consumed = start
    images: list[np.ndarray] = []
    labels: list[int] = []

    def batch(pos):
        arr = np.stack(images).transpose(0, 3, 1, 2)
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(arr)),
            "label": torch.tensor(labels, dtype=torch.int64),
            "_w": worker,
            "_pos": pos,
            "_stats": stats.as_tuple(),
        }
        images.clear()
        labels.clear()
        return out

    while True:
        shards = plan.shards(epoch, worker)
        order = plan.order(epoch, worker, shards)
        pending = np.zeros(len(order), dtype=bool)
        pending[order[consumed:]] = True
        reader = _EpochReader(plan, shards, pending, stats, strict)
        good = 0
        for step in range(consumed, len(order)):
            sample = reader.get(int(order[step]))
            if sample is None:
                if strict:
                    raise DataError(
                        f"missing sample at stream position {order[step]} of worker {worker}, epoch "
                        f"{epoch} (truncated shard?)"
                    )
                stats.skipped_samples += 1
                continue
            try:
                image, label = _decode(sample, plan.image)
            except (DataError, KeyError, ValueError) as exc:
                if strict:
                    raise DataError(
                        f"undecodable sample {sample.get('__key__')} in {sample.get('__url__')}: {exc}"
                    ) from exc
                stats.skipped_samples += 1
                continue
            good += 1
            images.append(image)
            labels.append(label)
            if len(images) == batch_size:
                yield batch((epoch, step + 1))
        if not plan.resampled:
            if images and not drop_last:
                yield batch((epoch, len(order)))
            yield {"_w": worker, "_end": True, "_stats": stats.as_tuple()}
            return
        if good == 0 and consumed == 0:
            raise DataError(f"worker {worker}: resampled epoch {epoch} produced no readable sample")
        epoch, consumed = epoch + 1, 0


class _IterableShards(torch.utils.data.IterableDataset):
    """What the torch DataLoader workers run: the per-worker generator for this worker's id."""

    def __init__(self, plan, starts, done, batch_size, strict, drop_last, stats):
        super().__init__()
        self.plan, self.starts, self.done, self.stats = plan, starts, done, stats
        self.batch_size, self.strict, self.drop_last = batch_size, strict, drop_last

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w = 0 if info is None else info.id
        return _worker_stream(
            self.plan, w, self.starts[w], self.done[w], self.batch_size, self.strict, self.drop_last, self.stats[w]
        )


class ShardLoader:
    """Iterable of batches ``{"image": uint8 [B, C, H, W], "label": int64 [B]}`` from fastui shards (contract 3).

    Args:
        source: shard folder (with manifest.json) or the manifest path.
        batch_size: samples per batch (per rank).
        seed: fixes shard order, shuffle and resampling; same seed and position -> same batches.
        shuffle_buffer: shuffle buffer slots per worker (<= 1: no shuffling within the shard order).
        num_workers: torch DataLoader worker processes decoding and batching (0 = in this process).
        resampled: True: infinite stream of shards drawn with replacement (training). False: one pass over this
            rank's disjoint share per ``iter()`` (epochs); the last batch of a worker may be smaller unless
            ``drop_last``.
        rank, world_size: this process's share; default from torch.distributed, else RANK/WORLD_SIZE, else 0/1.
        strict: raise on a corrupt shard or sample instead of skipping and counting it.
        drop_last: epoch mode only: drop each worker's last incomplete batch.
        pin_memory: pin batches (faster non_blocking copies to CUDA).

    ``stats`` -> {"skipped_samples", "skipped_shards"} up to the last batch handed out (all workers).
    ``state_dict()`` / ``load_state_dict()``: after a restore, iteration continues with exactly the batches an
    uninterrupted run would have produced next (same seed, batch size, workers and world size required).

    Example:
        loader = ShardLoader("data/fmnist32", batch_size=64, num_workers=2)
        for batch in loader:
            x = normalize(batch["image"], "cuda")
    """

    def __init__(
        self,
        source,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        num_workers: int = 0,
        resampled: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        strict: bool = False,
        drop_last: bool = False,
        pin_memory: bool = False,
        prefetch_factor: int = 2,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.manifest, self.root = read_manifest(source)
        self.batch_size, self.seed, self.num_workers = int(batch_size), int(seed), int(num_workers)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.resampled, self.strict, self.drop_last = bool(resampled), bool(strict), bool(drop_last)
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.workers = max(1, self.num_workers)
        self.plan = _Plan(
            self.manifest,
            self.root,
            self.seed,
            self.rank,
            self.world_size,
            self.workers,
            self.resampled,
            int(shuffle_buffer),
        )
        self.shuffle_buffer = int(shuffle_buffer)
        self.epoch = 0
        self._reset_epoch()
        self._base_stats = (0, 0)

    # --- metadata -------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Class names from the manifest (index = label)."""
        return list(self.manifest["class_names"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images."""
        img = self.manifest["image"]
        return img["channels"], img["height"], img["width"]

    @property
    def stats(self) -> dict:
        """Skipped samples/shards so far (all workers of this rank, up to the last batch handed out)."""
        ss = self._base_stats[0] + sum(s[0] for s in self._worker_stats)
        sh = self._base_stats[1] + sum(s[1] for s in self._worker_stats)
        return {"skipped_samples": ss, "skipped_shards": sh}

    # --- position ---------------------------------------------------------------------------------------------
    def _reset_epoch(self) -> None:
        start_epoch = 0 if self.resampled else self.epoch
        self._positions = [(start_epoch, 0)] * self.workers
        self._done = [False] * self.workers
        self._next = 0
        self._worker_stats = [(0, 0)] * self.workers

    def state_dict(self) -> dict:
        """Position after the last batch handed out (JSON-serialisable)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "workers": self.workers,
            "rank": self.rank,
            "world_size": self.world_size,
            "resampled": self.resampled,
            "shuffle_buffer": self.shuffle_buffer,
            "epoch": self.epoch,
            "positions": [list(p) for p in self._positions],
            "done": list(self._done),
            "next": self._next,
            "stats": self.stats,
            "num_shards": len(self.plan.counts),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by :meth:`state_dict` (raises if the sequence-defining settings differ)."""
        mine = self.state_dict()
        for key in (
            "version",
            "seed",
            "batch_size",
            "workers",
            "rank",
            "world_size",
            "resampled",
            "shuffle_buffer",
            "num_shards",
        ):
            if state.get(key) != mine[key]:
                raise ValueError(f"cannot resume loader: {key} was {state.get(key)!r}, now {mine[key]!r}")
        self.epoch = int(state["epoch"])
        self._positions = [tuple(int(v) for v in p) for p in state["positions"]]
        self._done = [bool(d) for d in state["done"]]
        self._next = int(state["next"])
        self._base_stats = (int(state["stats"]["skipped_samples"]), int(state["stats"]["skipped_shards"]))
        self._worker_stats = [(0, 0)] * self.workers

    # --- iteration --------------------------------------------------------------------------------------------
    def _source_iter(self):
        # Each worker restarts its skip counters at 0; what earlier runs counted is in _base_stats.
        dataset = _IterableShards(
            self.plan,
            list(self._positions),
            list(self._done),
            self.batch_size,
            self.strict,
            self.drop_last,
            [(0, 0)] * self.workers,
        )
        if self.num_workers == 0:
            return iter(dataset)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor,
        )
        return iter(loader)

    def _next_active(self, after: int) -> int:
        for k in range(1, self.workers + 1):
            w = (after + k) % self.workers
            if not self._done[w]:
                return w
        return after

    def __iter__(self):
        """Yield batches; epoch mode ends after this rank's share, resampled mode never ends."""
        if all(self._done):
            self._finish_epoch()
        self._base_stats = tuple(a + b for a, b in zip(self._base_stats, self._fold_worker_stats()))
        pending: dict[int, collections.deque] = collections.defaultdict(collections.deque)
        upstream = self._source_iter()
        if self._done[self._next]:
            self._next = self._next_active(self._next)
        try:
            while not all(self._done):
                w = self._next
                # Workers arrive in the DataLoader's own round robin, which restarts at worker 0 on every iter();
                # hold early arrivals so batches leave in the order the saved position defines.
                while not pending[w]:
                    item = next(upstream)
                    pending[item["_w"]].append(item)
                item = pending[w].popleft()
                self._worker_stats[w] = tuple(item["_stats"])
                if item.get("_end"):
                    self._done[w] = True
                    self._next = self._next_active(w)
                    continue
                self._positions[w] = tuple(item["_pos"])
                self._next = self._next_active(w)
                image = item["image"]
                if self.pin_memory and self.num_workers == 0 and torch.cuda.is_available():
                    image = image.pin_memory()  # workers > 0: the DataLoader pins
                yield {"image": image, "label": item["label"]}
        finally:
            del upstream
        self._finish_epoch()

    def _fold_worker_stats(self) -> tuple[int, int]:
        folded = (sum(s[0] for s in self._worker_stats), sum(s[1] for s in self._worker_stats))
        self._worker_stats = [(0, 0)] * self.workers
        return folded

    def _finish_epoch(self) -> None:
        self._base_stats = tuple(a + b for a, b in zip(self._base_stats, self._fold_worker_stats()))
        self.epoch += 1
        self._reset_epoch()


def _read_shard_samples(path: str) -> list[dict]:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    def files():
        with open(path, "rb") as f:
            for item in tar_file_iterator(f):
                item["__url__"] = path
                yield item

    return list(group_by_keys(files()))


def eval_indices(labels: np.ndarray, rank: int, world_size: int, n: int | None = None) -> np.ndarray:
    """Global sample indices of this rank's share of a class-balanced evaluation set.

    The set takes ``n // K`` samples of each of the ``K`` classes (the first ``n % K`` classes one more), lowest
    indices first (``n=None``: every sample). Listed class by class, the set is dealt to the ranks like cards
    (element ``t`` to rank ``t % world_size``), so the shares are disjoint, cover the set, differ in size by at most
    one, and each rank holds every class's count divided by ``world_size`` (rounded up or down).

    Returns:
        int64 [m] sorted global indices.
    """
    classes = np.unique(labels)
    per, extra = divmod(int(n), len(classes)) if n is not None else (None, 0)
    lists = []
    for k, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        want = len(idx) if per is None else per + (k < extra)
        if len(idx) < want:
            raise DataError(f"class {c} has {len(idx)} samples, the balanced set of {n} needs {want}")
        lists.append(idx[:want])
    chosen = np.concatenate(lists).astype(np.int64)
    return np.sort(chosen[rank::world_size])


def eval_reader(
    source, rank: int | None = None, world_size: int | None = None, n: int | None = None, batch_size: int = 250
):
    """Batches of this rank's disjoint, class-balanced share of the shards (for FID and other metrics).

    Args:
        source: shard folder or manifest path.
        rank, world_size: the share (default as in :class:`ShardLoader`).
        n: size of the whole evaluation set over all ranks (None = every sample).
        batch_size: samples per batch (the last may be smaller).

    Yields:
        {"image": uint8 [B, C, H, W], "label": int64 [B], "index": int64 [B] global sample indices}, in index order.
        Undecodable samples raise (evaluation sets must be complete).
    """
    manifest, root = read_manifest(source)
    rank, world_size = resolve_rank(rank, world_size)
    labels_path = root / manifest.get("labels_file", "labels.npy")
    labels = np.load(labels_path) if labels_path.exists() else None
    if labels is None:
        labels = np.concatenate(
            [[int(s["cls"]) for s in _read_shard_samples(str(root / e["name"]))] for e in manifest["shards"]]
        )
    wanted = eval_indices(labels, rank, world_size, n)
    want_set = set(wanted.tolist())
    images, labs, idxs = [], [], []
    for entry in manifest["shards"]:
        first, count = int(entry["first_index"]), int(entry["count"])
        if not want_set.intersection(range(first, first + count)):
            continue
        for sample in _read_shard_samples(str(root / entry["name"])):
            index = int(sample["__key__"])
            if index not in want_set:
                continue
            image, label = _decode(sample, manifest["image"])
            images.append(image)
            labs.append(label)
            idxs.append(index)
            if len(images) == batch_size:
                yield _eval_batch(images, labs, idxs)
    if images:
        yield _eval_batch(images, labs, idxs)


def _eval_batch(images, labels, idxs) -> dict:
    batch = {
        "image": torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))),
        "label": torch.tensor(labels, dtype=torch.int64),
        "index": torch.tensor(idxs, dtype=torch.int64),
    }
    images.clear()
    labels.clear()
    idxs.clear()
    return batch


__all__ = ["ShardLoader", "eval_indices", "eval_reader", "normalize", "resolve_rank", "shuffle_buffer_order"]
