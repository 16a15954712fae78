"""FID of a sampler over fixed seed sets, class-balanced labels, split across ranks, features gathered.

Determinism: sample ``i`` (global index 0..n-1) of seed set ``s`` always gets the same noise (numpy's PCG64 seeded with
``SeedSequence([s, i])``) and the same label (``balanced_labels(n, C, s)[i]``), whatever the number of ranks or the
batch size. Rank ``r`` of ``W`` handles the indices ``r, r + W, r + 2W, ...``; the features of all ranks are gathered
and put back in global index order before the statistics are computed, so a 1-rank and an 8-rank evaluation of the same
sampler give the same FID up to floating-point nondeterminism of the networks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .fid import FEATURE_DIM, InceptionFeatures, frechet_distance, precision_recall, stats, to_nchw_uint8
from .grid import to_uint8


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def rank_indices(n: int, rank: int, world_size: int) -> np.ndarray:
    """Global sample indices handled by ``rank``: ``rank, rank + world_size, ...`` below ``n``.

    The shares of all ranks are disjoint, cover ``0..n-1`` and differ in size by at most one.

    Returns:
        int64 ndarray.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return np.arange(rank, n, world_size, dtype=np.int64)


def balanced_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    """Class labels for ``n`` samples: every class ``n // C`` or ``n // C + 1`` times, in a seeded random order.

    Args:
        n: number of samples.
        num_classes: C (>= 1).
        seed: seed of the permutation (the seed set).

    Returns:
        int64 ndarray ``[n]``; the classes that get the extra sample when ``C`` does not divide ``n`` are
        ``0 .. n % C - 1``.
    """
    labels = np.arange(n, dtype=np.int64) % num_classes
    return labels[np.random.default_rng(seed).permutation(n)]


def sample_noise(indices: Sequence[int], shape: Sequence[int], seed: int) -> torch.Tensor:
    """Standard normal noise, one tensor of ``shape`` per global index, independent of batching.

    Args:
        indices: global sample indices.
        shape: per-sample shape, e.g. ``(1, 32, 32)``.
        seed: the seed set.

    Returns:
        float32 CPU tensor ``[len(indices), *shape]``.
    """
    # numpy's SeedSequence([seed, index]) keeps the full entropy of both numbers; torch's CPU generator keeps only
    # 32 bits of a seed, so seed sets combined into one integer would collide.
    out = np.empty((len(indices), *shape), dtype=np.float32)
    for j, i in enumerate(indices):
        out[j] = np.random.default_rng([int(seed), int(i)]).standard_normal(tuple(shape), dtype=np.float32)
    return torch.from_numpy(out)


def gather_features(local: torch.Tensor, n: int) -> np.ndarray:
    """All ranks' features in global index order (``all_gather`` when a process group is initialised).

    Args:
        local: ``[len(rank_indices(n, rank, W)), D]`` features of this rank, in its index order (on the device the
            process group's backend needs: CUDA for NCCL).
        n: total number of samples.

    Returns:
        float32 ndarray ``[n, D]`` on every rank.
    """
    world = dist_rank_world()[1]
    if world == 1:
        return local.float().cpu().numpy()
    per_rank = math.ceil(n / world)
    padded = torch.zeros((per_rank, local.shape[1]), dtype=torch.float32, device=local.device)
    padded[: local.shape[0]] = local.float()
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    out = np.empty((n, local.shape[1]), dtype=np.float32)
    for r, part in enumerate(parts):
        idx = rank_indices(n, r, world)
        out[idx] = part[: len(idx)].cpu().numpy()
    return out


def fid_over_seeds(
    sample_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    ref_mu: np.ndarray,
    ref_sigma: np.ndarray,
    n: int,
    seeds: Sequence[int],
    noise_shape: Sequence[int],
    num_classes: int = 0,
    net: InceptionFeatures | None = None,
    batch_size: int = 50,
    device="cpu",
    progress: bool = True,
    ref_features: np.ndarray | None = None,
) -> dict:
    """FID at ``n`` samples for each seed set, and mean +- std over the seed sets.

    Args:
        sample_fn: ``(noise [B, *noise_shape] on device, labels int64 [B] on device or None) -> images [B, C, H, W]``
            float in ``[-1, 1]``.
        ref_mu, ref_sigma: reference statistics.
        n: samples per seed set.
        seeds: the seed sets, e.g. ``(0, 1, 2)``.
        noise_shape: per-sample noise shape.
        num_classes: 0 for unconditional samplers, else C (labels are class-balanced).
        net: Inception features (default: a new :class:`InceptionFeatures` on ``device``).
        batch_size: samples per sampler call and Inception batch.
        device: where sampling and Inception run.
        progress: tqdm bar over batches (rank 0 only).
        ref_features: when given, improved precision/recall (k=3) are reported too.

    Returns:
        ``{"n", "seeds", "fid": [per seed set], "fid_mean", "fid_std"}`` (std with ``ddof=1``; 0 for one seed set),
        plus ``"precision"``/``"recall"`` lists when ``ref_features`` is given. Every rank gets the same dict.
    """
    device = torch.device(device)
    net = net or InceptionFeatures(device, batch_size=batch_size)
    rank, world = dist_rank_world()
    idx_all = rank_indices(n, rank, world)
    result: dict = {"n": int(n), "seeds": [int(s) for s in seeds], "fid": []}
    for seed in seeds:
        labels_all = balanced_labels(n, num_classes, seed) if num_classes else None
        local = torch.empty((len(idx_all), FEATURE_DIM), device=device)
        starts = range(0, len(idx_all), batch_size)
        if progress and rank == 0:
            from tqdm import tqdm

            starts = tqdm(starts, desc=f"seed set {seed}", unit="batch", leave=False)
        for s in starts:
            idx = idx_all[s : s + batch_size]
            noise = sample_noise(idx, noise_shape, seed).to(device)
            labels = torch.as_tensor(labels_all[idx], device=device) if labels_all is not None else None
            with torch.no_grad():
                images = sample_fn(noise, labels)
            local[s : s + len(idx)] = net.forward_uint8(to_nchw_uint8(to_uint8(images)))
        feats = gather_features(local, n)
        mu, sigma = stats(feats)
        result["fid"].append(frechet_distance(mu, sigma, ref_mu, ref_sigma))
        if ref_features is not None:
            p, r = precision_recall(ref_features, feats)
            result.setdefault("precision", []).append(p)
            result.setdefault("recall", []).append(r)
    fids = np.asarray(result["fid"])
    result["fid_mean"] = float(fids.mean())
    result["fid_std"] = float(fids.std(ddof=1)) if len(fids) > 1 else 0.0
    return result
