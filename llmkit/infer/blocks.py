"""Paged KV cache: a pool of fixed-size blocks that running requests take and give back.

A request holds only the blocks its tokens fill (``ceil(tokens / block_size)``), never a buffer
of the context window; blocks return to the free pool the moment it finishes or is cancelled.
The pool stores keys and values token-major, ``(layers, blocks · block_size, kv_heads, head_dim)``,
so a token's slot is ``block · block_size + offset``.

Prefix caching: a full block of a prompt is findable by its content — a SHA-256 chain over the
tokens from the start of the prompt through the block's end, salted with the adapter — so a later
request with the same prefix (a shared system prompt, the earlier turns of a chat, few-shot examples)
shares those blocks and computes only the rest. Shared blocks are counted (`refs`); a block no
request holds keeps its content and waits on a least-recently-used list, taken for new tokens only
when no never-used block is left. Only whole blocks are shared and new tokens always go to blocks of
their own, so a shared block is never written.

`PagedStep` is what one forward pass of the model sees: it presents the rows of the running batch
as the model's own `KVCache` would present a left-padded batch (``length``, ``record``,
``update``, ``advance``), so the Transformer needs no second attention path. Each layer writes the
new keys/values into their slots and reads every row's keys back, right-aligned; shorter rows
are padded from block 0, which is never handed out, and masked.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator, Sequence as Tokens

import torch

from ..models.config import ModelConfig


class CacheExhaustedError(RuntimeError):
    """The pool has no free block left."""


@dataclass
class Sequence:
    """The cache side of one request: its blocks and how many tokens they hold."""

    blocks: list[int] = field(default_factory=list)
    length: int = 0
    hashes: list[bytes] = field(default_factory=list)  # content keys of its leading full blocks


class BlockPool:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int = 16,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 prefix_cache: bool = True):
        if num_blocks < 2:
            raise ValueError(f"num_blocks={num_blocks}: the pool needs at least 2 blocks (block 0 is padding)")
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be positive")
        self.config, self.block_size, self.num_blocks = config, block_size, num_blocks
        # one slot past the blocks: the sink that padding queries write to (`PagedStep`), never read
        self.sink = num_blocks * block_size
        shape = (config.n_layers, self.sink + 1, config.n_kv_heads, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self._free = list(range(num_blocks - 1, 0, -1))  # a stack of never-used blocks; block 0 stays zero
        self.prefix_cache = prefix_cache
        self.refs = [0] * num_blocks  # requests holding each block
        self._key_of: dict[int, bytes] = {}  # cached block -> its content key
        self._block_of: dict[bytes, int] = {}  # content key -> cached block
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached blocks no request holds, least recent first
        self.prompt_tokens = 0  # prompt tokens looked up in the prefix cache
        self.hit_tokens = 0  # of them, found there

    @property
    def num_free(self) -> int:
        """Blocks a request can take: never used, or cached but held by no request."""
        return len(self._free) + len(self._idle)

    @property
    def cached_blocks(self) -> int:
        return len(self._key_of)

    @property
    def hit_rate(self) -> float:
        """Share of the prompt tokens looked up that the prefix cache held (0 before any lookup)."""
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

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
        """Give `seq` blocks enough for `tokens` tokens in all; all or nothing. Never-used blocks go
        first, then cached ones no request holds, least recently used first (their content is lost)."""
        need = self.blocks_for(tokens) - len(seq.blocks)
        if need > self.num_free:
            raise CacheExhaustedError(f"{need} more block(s) needed, {self.num_free} free")
        for _ in range(max(need, 0)):
            if self._free:
                block = self._free.pop()
            else:
                block, _ = self._idle.popitem(last=False)
                del self._block_of[self._key_of.pop(block)]
            self.refs[block] = 1
            seq.blocks.append(block)

    def release(self, seq: Sequence) -> None:
        for block in reversed(seq.blocks):
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self._key_of:
                    self._idle[block] = None  # the most recently used end
                else:
                    self._free.append(block)
        seq.blocks, seq.length, seq.hashes = [], 0, []

    def is_free(self, block: int) -> bool:
        return self.refs[block] == 0 and block != 0

    def _keys(self, tokens: Tokens[int], salt: str, start: int, stop: int, last: bytes | None) -> Iterator[bytes]:
        """Content keys of the full blocks `start` to `stop` of `tokens`, chained from `last`, one at a time
        (a lookup stops hashing at its first miss)."""
        key, bs = last if last is not None else hashlib.sha256(salt.encode()).digest(), self.block_size
        for i in range(start, stop):
            key = hashlib.sha256(key + b"".join(int(t).to_bytes(4, "little") for t in tokens[i * bs:(i + 1) * bs])
                                 ).digest()
            yield key

    def share_prefix(self, seq: Sequence, tokens: Tokens[int], salt: str = "") -> int:
        """Give an empty `seq` the cached blocks that hold the longest prefix of `tokens` in whole blocks,
        leaving at least its last token to compute (its logits are needed); returns the tokens shared.
        `salt` keeps blocks apart that the same tokens fill differently (another adapter). The hit rate
        is the caller's to count (`count_lookup`), once per prompt it actually serves."""
        if seq.blocks:
            raise ValueError("share_prefix takes a sequence that holds no blocks yet")
        if not self.prefix_cache:
            return 0
        for key in self._keys(tokens, salt, 0, (len(tokens) - 1) // self.block_size, None):
            block = self._block_of.get(key)
            if block is None:
                break
            self._idle.pop(block, None)
            self.refs[block] += 1
            seq.blocks.append(block)
            seq.hashes.append(key)
        seq.length = len(seq.blocks) * self.block_size
        return seq.length

    def count_lookup(self, prompt_tokens: int, found: int) -> None:
        """Add one served prompt to the hit rate: `found` of its `prompt_tokens` came from the cache."""
        self.prompt_tokens += prompt_tokens
        self.hit_tokens += found

    def register(self, seq: Sequence, tokens: Tokens[int], salt: str = "") -> None:
        """Make the full blocks of `seq` (which holds `tokens`) findable by later requests."""
        if not self.prefix_cache:
            return
        done = len(seq.hashes)
        keys = self._keys(tokens, salt, done, min(seq.length, len(tokens)) // self.block_size,
                          seq.hashes[-1] if seq.hashes else None)
        for i, key in enumerate(keys, start=done):
            seq.hashes.append(key)
            block = seq.blocks[i]
            if key not in self._block_of and block not in self._key_of:
                self._block_of[key], self._key_of[block] = block, key

    def slots(self, seq: Sequence, start: int, stop: int) -> torch.Tensor:
        """Pool slots of the tokens `start` to `stop` of `seq`."""
        pos = torch.arange(start, stop)
        table = torch.tensor(seq.blocks, dtype=torch.long)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size


class PagedStep:
    """One forward pass over `seqs`, row i adding `t[i]` tokens (or `t` each; capacity already reserved).

    Rows with fewer new tokens than the longest are left-padded in the query dimension: the padding
    queries' keys and values go to the pool's sink slot and their outputs are meaningless; the real
    queries of every row line up on the right, as the model expects of a left-padded batch."""

    def __init__(self, pool: BlockPool, seqs: list[Sequence], t: int | list[int]):
        ts = [t] * len(seqs) if isinstance(t, int) else list(t)
        if len(ts) != len(seqs) or min(ts) < 1:
            raise ValueError(f"new tokens per row {ts} for {len(seqs)} rows: give one positive count per row")
        self.pool, self.seqs, self.ts = pool, seqs, ts
        self.t = max(ts)
        device = pool.k.device
        ends = [s.length + n for s, n in zip(seqs, ts)]
        self.total = max(max(ends), self.t)
        self.length = self.total - self.t  # what the model calls the cached length (its `past`)
        self.batch_size = len(seqs)
        self._ragged = any(e != self.total for e in ends)
        sink = torch.full((1,), pool.sink, dtype=torch.long)
        write, read = [], []
        for s, n, end in zip(seqs, ts, ends):
            write += [sink.expand(self.t - n), pool.slots(s, s.length, end)]
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
        for s, n in zip(self.seqs, self.ts):
            s.length += n


def padded_passes(counts: list[int], waste: float = 1.25, slack: int = 64) -> list[list[int]]:
    """Indices of rows adding `counts` new tokens, grouped into forward passes: a `PagedStep` pads every row
    to the longest of its pass, so a pass takes rows of similar length (shortest first), computing at most
    `waste` times the tokens they need or `slack` tokens more (a pass of its own costs a read of every
    weight, which is worth about that many tokens of compute on a CPU)."""
    passes: list[list[int]] = []
    total = 0
    for i in sorted(range(len(counts)), key=lambda i: counts[i]):
        padded = counts[i] * (len(passes[-1]) + 1) if passes else 0
        if passes and (padded <= waste * (total + counts[i]) or padded - total - counts[i] <= slack):
            passes[-1].append(i)
            total += counts[i]
        else:
            passes.append([i])
            total = counts[i]
    return passes
