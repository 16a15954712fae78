"""ShardLoader: rank/worker splitting, exact resume, corrupt-data handling, evaluation reader."""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fastui.data.importers import ArraySource, DataError
from fastui.data.loader import ShardLoader, eval_reader, normalize, shuffle_buffer_order
from fastui.data.writer import write_shards

N, SHARD = 60, 5  # 12 shards: enough for 2 ranks x 2 workers to get 3 shards each


def _indexed_images(n: int) -> np.ndarray:
    """8x8 gray images whose first two pixels spell the sample index, so a batch tells which samples it holds."""
    images = np.zeros((n, 8, 8, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 1, 0] = np.arange(n) // 256
    images[:, 4:, 4:, 0] = 200
    return images


def _indices(batch: dict) -> list[int]:
    img = batch["image"]
    return (img[:, 0, 0, 0].long() + 256 * img[:, 0, 0, 1].long()).tolist()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "toy"
    src = ArraySource(
        name="toy", class_names=[str(c) for c in range(3)], images=_indexed_images(N), labels=np.arange(N) % 3
    )
    write_shards(src, out, shard_size=SHARD, progress=False)
    return out


def _take(loader, k: int) -> list[list[int]]:
    return [_indices(b) for b in itertools.islice(iter(loader), k)]


def test_normalize_maps_uint8_range_to_minus_one_one():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    y = normalize(x, "cpu", torch.float64)
    assert torch.allclose(y.flatten(), torch.tensor([-1.0, 51 / 127.5 - 1, 1.0], dtype=torch.float64))


def test_shuffle_buffer_order_is_a_bounded_lookahead_permutation():
    order = shuffle_buffer_order(200, 16, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(200))
    assert all(order[i] <= i + 15 for i in range(200))  # never needs more than 16 samples in memory
    assert order.tolist() != list(range(200))


def test_labels_match_images(shards):
    batch = next(iter(ShardLoader(shards / "manifest.json", 10, num_workers=0)))  # manifest path works too
    assert batch["label"].tolist() == [i % 3 for i in _indices(batch)]
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (10, 1, 8, 8)


def test_two_ranks_two_workers_read_disjoint_shards_and_cover_every_sample_once(shards):
    seen = {}
    for rank in range(2):
        loader = ShardLoader(
            shards, 4, seed=3, shuffle_buffer=8, num_workers=2, resampled=False, rank=rank, world_size=2
        )
        seen[rank] = [i for batch in loader for i in _indices(batch)]
    shards_of = {r: {i // SHARD for i in idx} for r, idx in seen.items()}
    assert not shards_of[0] & shards_of[1]
    assert sorted(seen[0] + seen[1]) == list(range(N))


def test_epochs_reshuffle_and_same_seed_repeats(shards):
    a = ShardLoader(shards, 6, seed=1, shuffle_buffer=10, resampled=False)
    b = ShardLoader(shards, 6, seed=1, shuffle_buffer=10, resampled=False)
    epoch0 = [i for batch in a for i in _indices(batch)]
    epoch1 = [i for batch in a for i in _indices(batch)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(N))
    assert epoch0 != epoch1
    assert [i for batch in b for i in _indices(batch)] == epoch0


# (False, 5, 16): 12 shards over 5 workers = 3,3,2,2,2 shards = 4,4,3,3,3 batches, so after 16 batches workers
# 2-4 have handed out their last batch while 0-1 have not: the restore starts from a mix of finished and running.
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("resampled,workers,k", [(True, 0, 5), (True, 2, 5), (False, 2, 5), (False, 5, 16)])
def test_resume_continues_with_the_same_batches(shards, resampled, workers, k):
    def make():
        return ShardLoader(shards, 4, seed=7, shuffle_buffer=6, num_workers=workers, resampled=resampled)

    def stream(loader, k):  # epoch mode: chain epochs so the run crosses an epoch boundary
        if resampled:
            return _take(loader, k)
        out = []
        while len(out) < k:
            out += _take(loader, k - len(out))
        return out

    total = 24  # about 15-17 batches per epoch: 24 crosses into epoch 1
    full = stream(make(), total)
    first = make()
    head = _take(first, k)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    tail = stream(resumed, total - k)
    assert head == full[:k]
    assert tail == full[k:]


def test_rank_comes_from_the_environment_and_resampled_ranks_differ(shards, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    streams = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        loader = ShardLoader(shards, 5, seed=2)
        assert (loader.rank, loader.world_size) == (int(rank), 2)
        streams.append(_take(loader, 4))
    assert streams[0] != streams[1]


def test_resume_rejects_a_different_worker_count(shards):
    state = ShardLoader(shards, 4, num_workers=0).state_dict()
    with pytest.raises(ValueError, match="workers"):
        ShardLoader(shards, 4, num_workers=2).load_state_dict(state)


def _copy_shards(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _corrupt(tmp_path: Path, shards: Path) -> Path:
    """Shard 1 truncated in its 3rd sample; sample 0's PNG in shard 0 replaced by garbage."""
    root = _copy_shards(shards, tmp_path / "bad")
    shard1 = root / "train-000001.tar"
    raw = shard1.read_bytes()
    # Each member is a 512-byte header plus one 512-byte data block (tiny files), so a sample is 3 KiB: cut
    # inside the PNG data of the shard's 3rd sample.
    shard1.write_bytes(raw[: 2 * 3 * 1024 + 512 + 100])
    buf = io.BytesIO()
    with tarfile.open(root / "train-000000.tar") as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            if info.name == "00000000.png":
                data = b"not a png at all"
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    (root / "train-000000.tar").write_bytes(buf.getvalue())
    return root


def test_truncated_shard_and_undecodable_image_are_skipped_and_counted(tmp_path, shards):
    root = _corrupt(tmp_path, shards)
    loader = ShardLoader(root, 4, resampled=False, num_workers=2)
    got = [i for batch in loader for i in _indices(batch)]
    assert 0 not in got  # the garbage PNG
    assert len(got) == len(set(got))
    lost = N - len(got)
    assert lost >= 2  # the bad image plus at least the truncated sample
    assert loader.stats == {"skipped_samples": lost, "skipped_shards": 1}
    assert set(range(10, N)) <= set(got)  # shards 2.. are intact


def test_shard_cut_at_a_block_boundary_is_detected_by_the_manifest_count(tmp_path, shards):
    root = _copy_shards(shards, tmp_path / "cut")
    shard1 = root / "train-000001.tar"
    shard1.write_bytes(shard1.read_bytes()[: 2 * 3 * 1024])  # ends cleanly after its 2nd sample
    loader = ShardLoader(root, 4, resampled=False)
    got = [i for batch in loader for i in _indices(batch)]
    assert sorted(set(range(N)) - set(got)) == [7, 8, 9]
    assert loader.stats == {"skipped_samples": 3, "skipped_shards": 1}


def test_strict_mode_makes_corrupt_data_fatal(tmp_path, shards):
    root = _corrupt(tmp_path, shards)
    with pytest.raises(DataError):
        for _ in ShardLoader(root, 4, resampled=False, strict=True, shuffle_buffer=1):
            pass


@pytest.mark.parametrize("world_size", [2, 3])  # 3 divides the class count: shares must still mix classes
def test_eval_reader_gives_ranks_disjoint_class_balanced_shares(shards, world_size):
    parts = []
    for rank in range(world_size):
        batches = list(eval_reader(shards, rank=rank, world_size=world_size, n=30, batch_size=7))
        idx = torch.cat([b["index"] for b in batches]).tolist()
        labels = torch.cat([b["label"] for b in batches])
        assert idx == [i for b in batches for i in _indices(b)]  # index matches the image content
        counts = torch.bincount(labels, minlength=3)
        assert int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == 30 // world_size
        parts.append(set(idx))
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 30
    both = set().union(*parts)
    assert all(sum(1 for i in both if i % 3 == c) == 10 for c in range(3))  # 10 per class over all ranks
