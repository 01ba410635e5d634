"""Reading packed shards: `PackedDataset` (memory-mapped random access) and `BatchLoader`
(deterministic, resumable, sharded across distributed ranks)."""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmkit.data.config import DataError

if TYPE_CHECKING:
    import torch

INDEX_FILE = "index.json"
STATS_FILE = "stats.json"
SPLITS = ("train", "val")


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    """The ``index.json`` of a prepared data directory."""
    file = Path(path) / INDEX_FILE
    if not file.is_file():
        raise DataError(f"{file} does not exist: {path} is not a prepared data directory; make one with "
                        f"`llmkit data prepare` (llmkit.data.prepare_data)")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{file} is not valid JSON ({e}); prepare the data again") from e


class PackedDataset:
    """The packed sequences of one split of a prepared data directory.

    ``ds[i]`` is sequence i as an int64 array of ``seq_len + 1`` tokens (inputs ``[:-1]``, targets
    ``[1:]``). Shards are memory-mapped lazily, so the dataset is cheap to create and to pickle.
    """

    def __init__(self, path: str | os.PathLike, split: str = "train") -> None:
        if split not in SPLITS:
            raise DataError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        self.path = Path(path)
        self.split = split
        self.index = read_index(self.path)
        entry = self.index["splits"][split]
        self.dtype = np.dtype(self.index["dtype"])
        self._shards = entry["shards"]
        for shard in self._shards:  # check every file now: a truncated shard fails here, not mid-training
            file = self.path / shard["file"]
            expected = shard["num_tokens"] * self.dtype.itemsize
            if not file.is_file():
                raise DataError(f"shard {file} is missing (listed in {self.path / INDEX_FILE}); "
                                f"prepare the data again")
            if file.stat().st_size != expected:
                raise DataError(f"shard {file} has {file.stat().st_size} bytes but the index says {expected} "
                                f"({shard['num_tokens']} {self.dtype.name} tokens): it is truncated or "
                                f"corrupt; prepare the data again")
        self._starts = np.cumsum([0] + [s["num_sequences"] for s in self._shards]).tolist()
        self._maps: list[np.memmap | None] = [None] * len(self._shards)

    @property
    def seq_len(self) -> int:
        return int(self.index["seq_len"])

    @property
    def vocab_size(self) -> int:
        return int(self.index["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.index["eos_id"])

    @property
    def num_tokens(self) -> int:
        """Tokens this split's sequences cover: ``len(self) * seq_len + 1`` (0 when empty)."""
        n = len(self)
        return n * self.seq_len + 1 if n else 0

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / self.index["tokenizer"]

    def __len__(self) -> int:
        return self._starts[-1]

    def _map(self, k: int) -> np.memmap:
        if self._maps[k] is None:
            self._maps[k] = np.memmap(self.path / self._shards[k]["file"], dtype=self.dtype, mode="r")
        return self._maps[k]

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range: the {self.split} split has {n} sequences")
        k = bisect.bisect_right(self._starts, i) - 1
        off = (i - self._starts[k]) * self.seq_len
        return np.asarray(self._map(k)[off:off + self.seq_len + 1], dtype=np.int64)

    def get_batch(self, indices: Any) -> np.ndarray:
        """Sequences `indices` stacked into a (len(indices), seq_len + 1) int64 array."""
        return np.stack([self[i] for i in indices]) if len(indices) else np.zeros((0, self.seq_len + 1), np.int64)

    def stream(self) -> np.ndarray:
        """The split's whole token stream (`num_tokens` int64 ids), undoing the one-token overlap
        of consecutive sequences."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self[i][:-1] for i in range(len(self))] + [self[len(self) - 1][-1:]])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = [None] * len(self._shards)  # memmaps reopen in the receiving process
        return state

    def __repr__(self) -> str:
        return f"PackedDataset({str(self.path)!r}, split={self.split!r}, sequences={len(self)}, seq_len={self.seq_len})"


class BatchLoader:
    """An endless, deterministic iterator of (batch_size, seq_len + 1) `torch.LongTensor` batches
    for one rank.

    Epoch e visits the sequences in the order ``np.random.default_rng([seed, e]).permutation(n)``
    (identity without shuffle). Each step takes the next ``batch_size * world_size`` indices of
    that order and rank r keeps the slice ``[r*batch_size, (r+1)*batch_size)``, so the ranks
    together see exactly the single-process batch of size ``batch_size * world_size``. With
    ``drop_last`` the incomplete last global batch of an epoch is skipped; without it, it is
    completed with indices from the start of the same epoch's order. `state_dict` /
    `load_state_dict` resume exactly where the loader stopped.
    """

    def __init__(self, dataset: PackedDataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank={rank} must be in [0, world_size={world_size})")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.drop_last = rank, world_size, shuffle, drop_last
        self.global_batch = batch_size * world_size
        n = len(dataset)
        if n < self.global_batch:
            where = getattr(dataset, "split", "dataset")
            raise DataError(f"the {where} split has {n} sequences of {getattr(dataset, 'seq_len', '?')} tokens, fewer "
                            f"than one global batch (batch_size {batch_size} x world_size {world_size} = "
                            f"{self.global_batch}); use a smaller batch size or seq_len, or more data")
        self.epoch = 0
        self.position = 0  # indices of this epoch's order already consumed (all ranks together)
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.dataset)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def order(self, epoch: int) -> np.ndarray:
        """The global visiting order of `epoch`."""
        if self._order_epoch != epoch:
            n = len(self.dataset)
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order_epoch = epoch
        return self._order

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> "torch.Tensor":
        import torch

        if self.position >= self.steps_per_epoch * self.global_batch:
            self.epoch, self.position = self.epoch + 1, 0
        order = self.order(self.epoch)
        step = order[self.position:self.position + self.global_batch]
        if len(step) < self.global_batch:  # drop_last=False: complete from the start of the epoch
            step = np.concatenate([step, order[:self.global_batch - len(step)]])
        self.position += self.global_batch
        mine = step[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return torch.from_numpy(self.dataset.get_batch(mine))

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from: ``{"epoch", "position"}``."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.steps_per_epoch * self.global_batch or position % self.global_batch:
            raise DataError(f"loader state {state} does not fit this loader ({len(self.dataset)} sequences, global "
                            f"batch {self.global_batch}); resume with the same data, batch size and world size")
        self.epoch, self.position = epoch, position
