"""Paged KV cache: a pool of fixed-size blocks that running requests take and give back.

A request holds only the blocks its tokens fill (``ceil(tokens / block_size)``), never a buffer
of the context window; blocks return to the free pool the moment it finishes or is cancelled.
The pool stores keys and values token-major, ``(layers, blocks · block_size, kv_heads, head_dim)``,
so a token's slot is ``block · block_size + offset``.

`PagedStep` is what one forward pass of the model sees: it presents the rows of the running batch
as the model's own `KVCache` would present a left-padded batch (``length``, ``record``,
``update``, ``advance``), so the Transformer needs no second attention path. Each layer writes the
new keys/values into their slots and reads every row's keys back, right-aligned; shorter rows
are padded from block 0, which is never handed out, and masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.config import ModelConfig


class CacheExhaustedError(RuntimeError):
    """The pool has no free block left."""


@dataclass
class Sequence:
    """The cache side of one request: its blocks and how many tokens they hold."""

    blocks: list[int] = field(default_factory=list)
    length: int = 0


class BlockPool:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int = 16,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        if num_blocks < 2:
            raise ValueError(f"num_blocks={num_blocks}: the pool needs at least 2 blocks (block 0 is padding)")
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be positive")
        self.config, self.block_size, self.num_blocks = config, block_size, num_blocks
        shape = (config.n_layers, num_blocks * block_size, config.n_kv_heads, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self._free = list(range(num_blocks - 1, 0, -1))  # a stack; block 0 stays zero, for padding

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def capacity_tokens(self) -> int:
        """Tokens the pool can hold at once (block 0 excluded)."""
        return (self.num_blocks - 1) * self.block_size

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def reserve(self, seq: Sequence, tokens: int) -> None:
        """Give `seq` blocks enough for `tokens` tokens in all; all or nothing."""
        need = self.blocks_for(tokens) - len(seq.blocks)
        if need > len(self._free):
            raise CacheExhaustedError(f"{need} more block(s) needed, {len(self._free)} free")
        for _ in range(max(need, 0)):
            seq.blocks.append(self._free.pop())

    def release(self, seq: Sequence) -> None:
        self._free.extend(reversed(seq.blocks))
        seq.blocks, seq.length = [], 0

    def slots(self, seq: Sequence, start: int, stop: int) -> torch.Tensor:
        """Pool slots of the tokens `start` to `stop` of `seq`."""
        pos = torch.arange(start, stop)
        table = torch.tensor(seq.blocks, dtype=torch.long)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size


class PagedStep:
    """One forward pass over `seqs`, each adding `t` tokens (capacity already reserved)."""

    def __init__(self, pool: BlockPool, seqs: list[Sequence], t: int):
        self.pool, self.seqs, self.t = pool, seqs, t
        device = pool.k.device
        ends = [s.length + t for s in seqs]
        self.total = max(ends)
        self.length = self.total - t  # what the model calls the cached length (its `past`)
        self.batch_size = len(seqs)
        self._ragged = any(e != self.total for e in ends)
        write, read = [], []
        for s, end in zip(seqs, ends):
            write.append(pool.slots(s, s.length, end))
            row = torch.zeros(self.total, dtype=torch.long)  # slot 0: block 0, zeros
            row[self.total - end:] = pool.slots(s, 0, end)
            read.append(row)
        self.write = torch.cat(write).to(device)
        self.read = torch.stack(read).flatten().to(device)
        self.valid = None
        if self._ragged:
            idx = torch.arange(self.total)
            self.valid = torch.stack([idx >= self.total - e for e in ends]).to(device)

    def record(self, attention_mask: torch.Tensor | None, t: int) -> torch.Tensor | None:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("a paged cache step takes unpadded rows: give no attention_mask")
        return self.valid

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, t, d = k.shape
        pk, pv = self.pool.k[layer], self.pool.v[layer]
        pk.index_copy_(0, self.write, k.transpose(1, 2).reshape(b * t, h, d).to(pk.dtype))
        pv.index_copy_(0, self.write, v.transpose(1, 2).reshape(b * t, h, d).to(pv.dtype))
        keys = pk.index_select(0, self.read).view(b, self.total, h, d).transpose(1, 2)
        values = pv.index_select(0, self.read).view(b, self.total, h, d).transpose(1, 2)
        return keys.to(k.dtype), values.to(v.dtype)

    def advance(self, t: int) -> None:
        for s in self.seqs:
            s.length += t
