"""Seed sets, class-balanced labels, rank split and feature gathering of the sampler evaluation."""

import numpy as np
import pytest
import torch

from fastui.eval import sampling


@pytest.mark.parametrize("n,world", [(100, 1), (100, 3), (37, 4), (5, 8)])
def test_rank_split_is_disjoint_covering_and_balanced(n, world):
    shares = [sampling.rank_indices(n, r, world) for r in range(world)]
    merged = np.concatenate(shares)
    assert len(merged) == n and set(merged.tolist()) == set(range(n))  # disjoint + covering
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,classes", [(1000, 10), (1003, 10), (7, 10)])
def test_balanced_labels_give_every_class_the_same_count_up_to_one(n, classes):
    labels = sampling.balanced_labels(n, classes, seed=3)
    counts = np.bincount(labels, minlength=classes)
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert not np.array_equal(labels, sampling.balanced_labels(n, classes, seed=4)) or n < 10


def test_labels_split_over_ranks_are_globally_balanced():
    n, classes, world = 1000, 10, 4
    labels = sampling.balanced_labels(n, classes, seed=0)
    per_rank = [labels[sampling.rank_indices(n, r, world)] for r in range(world)]
    counts = np.bincount(np.concatenate(per_rank), minlength=classes)
    assert (counts == n // classes).all()


def test_noise_of_a_sample_does_not_depend_on_batching_or_rank():
    full = sampling.sample_noise(range(10), (1, 4, 4), seed=7)
    part = sampling.sample_noise([3, 8], (1, 4, 4), seed=7)
    torch.testing.assert_close(part, full[[3, 8]], rtol=0, atol=0)
    other = sampling.sample_noise([3], (1, 4, 4), seed=8)
    assert not torch.equal(other[0], full[3])


class _PixelNet:
    """Stand-in feature extractor: 6 per-image pixel statistics (keeps the test free of the Inception weights)."""

    def forward_uint8(self, x):
        x = x.double()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).float()


def test_fid_over_seeds_is_independent_of_batch_size(monkeypatch):
    monkeypatch.setattr(sampling, "FEATURE_DIM", 6)
    calls = []

    def sample_fn(noise, labels):
        calls.append(labels.clone())
        return torch.tanh(noise + labels.view(-1, 1, 1, 1).float() / 10)

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((100, 6)) * 20 + 128
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    kw = {"n": 40, "seeds": [0, 1], "noise_shape": (1, 4, 4), "num_classes": 4, "net": _PixelNet(), "progress": False}
    a = sampling.fid_over_seeds(sample_fn, mu, sigma, batch_size=7, **kw)
    b = sampling.fid_over_seeds(sample_fn, mu, sigma, batch_size=40, **kw)
    np.testing.assert_allclose(a["fid"], b["fid"], rtol=1e-6)
    assert a["fid"][0] != a["fid"][1]  # different seed sets, different samples
    assert a["fid_mean"] == pytest.approx(np.mean(a["fid"])) and a["fid_std"] == pytest.approx(np.std(a["fid"], ddof=1))
    seen = torch.cat(calls[: len(range(0, 40, 7))])
    assert torch.bincount(seen, minlength=4).tolist() == [10, 10, 10, 10]


def _gather_worker(rank, world, port, out):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    n = 11
    idx = sampling.rank_indices(n, rank, world)
    local = torch.as_tensor(idx, dtype=torch.float32).view(-1, 1).repeat(1, 3)  # row i holds its global index
    out[rank] = sampling.gather_features(local, n)[:, 0].tolist()
    torch.distributed.destroy_process_group()


def test_features_gathered_over_two_gloo_ranks_come_back_in_global_order():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(2, port, out), nprocs=2, join=True)
    assert out[0] == out[1] == [float(i) for i in range(11)]
