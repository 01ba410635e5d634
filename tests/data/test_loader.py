"""PackedDataset random access and BatchLoader: determinism, ranks, resume, epochs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from llmkit.data import BatchLoader, DataError, PackedDataset, prepare_data
from tests.data.helpers import config, make_docs, write_docs


@pytest.fixture(scope="module")
def packed(tmp_path_factory, small_tokenizer):
    root = tmp_path_factory.mktemp("loader")
    corpus = write_docs(root / "c", make_docs(10))
    prepare_data(config(corpus, seq_len=8, val_fraction=0.1, shard_tokens=100), root / "out", small_tokenizer)
    return root / "out"


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_dataset_access(packed):
    ds = PackedDataset(packed, "train")
    assert ds.seq_len == 8 and ds.vocab_size == 300 and ds.eos_id == 0 and len(ds) > 100
    assert ds.num_tokens == len(ds) * 8 + 1
    assert ds[0].dtype == np.int64 and ds[0].shape == (9,)
    np.testing.assert_array_equal(ds[-1], ds[len(ds) - 1])
    np.testing.assert_array_equal(ds.get_batch([3, 1]), np.stack([ds[3], ds[1]]))
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
    clone = pickle.loads(pickle.dumps(ds))  # e.g. into DataLoader workers
    np.testing.assert_array_equal(clone[5], ds[5])
    assert 0 < len(PackedDataset(packed, "val")) < len(ds)


def test_loader_order_and_determinism(packed):
    ds = PackedDataset(packed)
    loader = BatchLoader(ds, batch_size=4, seed=3)
    batches = take(loader, loader.steps_per_epoch + 2)
    assert all(b.dtype == torch.int64 and b.shape == (4, 9) for b in batches)
    perm = np.random.default_rng([3, 0]).permutation(len(ds))
    for step in range(2):
        np.testing.assert_array_equal(batches[step].numpy(), ds.get_batch(perm[step * 4:(step + 1) * 4]))
    assert loader.steps_per_epoch == len(ds) // 4
    epoch1 = np.random.default_rng([3, 1]).permutation(len(ds))
    np.testing.assert_array_equal(batches[loader.steps_per_epoch].numpy(), ds.get_batch(epoch1[:4]))
    assert loader.state_dict()["epoch"] == 1
    same = take(BatchLoader(ds, batch_size=4, seed=3), 5)
    assert all(torch.equal(a, b) for a, b in zip(batches, same))
    other = take(BatchLoader(ds, batch_size=4, seed=4), 5)
    assert not all(torch.equal(a, b) for a, b in zip(batches, other))
    plain = take(BatchLoader(ds, batch_size=4, shuffle=False), 2)
    np.testing.assert_array_equal(plain[1].numpy(), ds.get_batch(range(4, 8)))


def test_ranks_together_equal_single_process(packed):
    ds = PackedDataset(packed)
    single = BatchLoader(ds, batch_size=6, seed=1)
    ranks = [BatchLoader(ds, batch_size=2, seed=1, rank=r, world_size=3) for r in range(3)]
    assert single.steps_per_epoch == ranks[0].steps_per_epoch
    for _ in range(single.steps_per_epoch + 3):  # across an epoch boundary
        assert torch.equal(torch.cat([next(r) for r in ranks]), next(single))


def test_resume_continues_exactly(packed):
    ds = PackedDataset(packed)
    straight = BatchLoader(ds, batch_size=5, seed=7)
    expected = take(straight, 30)
    first = BatchLoader(ds, batch_size=5, seed=7)
    take(first, 12)
    state = first.state_dict()
    assert set(state) == {"epoch", "position"}
    resumed = BatchLoader(ds, batch_size=5, seed=7)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(take(resumed, 18), expected[12:]))
    with pytest.raises(DataError, match="does not fit"):
        resumed.load_state_dict({"epoch": 0, "position": 3})


def test_epoch_visits_each_sequence_once(packed):
    ds = PackedDataset(packed)
    loader = BatchLoader(ds, batch_size=7, seed=0)
    rows = torch.cat(take(loader, loader.steps_per_epoch))
    order = loader.order(0)
    assert sorted(order.tolist()) == list(range(len(ds)))
    np.testing.assert_array_equal(rows.numpy(), ds.get_batch(order[:loader.steps_per_epoch * 7]))
    keep_all = BatchLoader(ds, batch_size=7, seed=0, drop_last=False)
    assert keep_all.steps_per_epoch == -(-len(ds) // 7)
    last = take(keep_all, keep_all.steps_per_epoch)[-1]  # completed from the start of the epoch
    assert last.shape == (7, 9)


def test_loader_too_few_sequences(packed):
    ds = PackedDataset(packed, "val")
    with pytest.raises(DataError, match=rf"has {len(ds)} sequences.*smaller batch size or seq_len, or more data"):
        BatchLoader(ds, batch_size=len(ds), world_size=2)
