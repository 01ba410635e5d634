"""A preallocated key/value cache: prefill once, then one token per step, with no copying.

All layers share one buffer of shape (layers, batch, kv_heads, max_len, head_dim). Slots are
filled left to right; with left-padded batches the cache also remembers which slots hold real
tokens (`valid`), so that attention skips the padding and positions count only real tokens.
"""

from __future__ import annotations

import torch

from .config import ModelConfig


class CacheFullError(RuntimeError):
    pass


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.max_len = max_len or config.context_window
        shape = (config.n_layers, batch_size, config.n_kv_heads, self.max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.batch_size = batch_size
        self.length = 0  # slots filled so far (same for every row)
        self.valid: torch.Tensor | None = None  # (batch, max_len) bool, only once padding was seen

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def record(self, attention_mask: torch.Tensor | None, t: int) -> torch.Tensor | None:
        """Note which of the next `t` slots hold real tokens; return the validity of all slots
        up to the new length (None when every slot so far is real)."""
        end = self.length + t
        if end > self.max_len:
            raise CacheFullError(
                f"KV cache holds {self.max_len} positions but {end} are needed: "
                "create the cache with a larger max_len, or generate fewer tokens"
            )
        has_padding = attention_mask is not None and not bool(attention_mask.all())
        if has_padding and self.valid is None:
            self.valid = torch.ones(self.batch_size, self.max_len, dtype=torch.bool, device=self.k.device)
        if self.valid is not None:
            if attention_mask is None:
                self.valid[:, self.length:end] = True
            else:
                self.valid[:, self.length:end] = attention_mask.bool()
            return self.valid[:, :end]
        return None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values of one layer; return views of all filled slots."""
        t = k.shape[2]
        end = self.length + t
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, t: int) -> None:
        """Called once per forward pass, after every layer has written its slots."""
        self.length += t

    def reset(self) -> None:
        self.length = 0
        self.valid = None

    def select(self, rows: torch.Tensor | list[int]) -> None:
        """Keep only some batch rows (e.g. after beam pruning or dropping finished requests)."""
        rows = torch.as_tensor(rows, device=self.k.device)
        self.k, self.v = self.k[:, rows].contiguous(), self.v[:, rows].contiguous()
        if self.valid is not None:
            self.valid = self.valid[rows]
        self.batch_size = len(rows)


class EncoderMemory:
    """An encoder's output as a decoder's cross-attention reads it: the states (batch, source, dim),
    which of them are real tokens (`mask`, batch × source, None when all are), and each layer's
    keys and values, projected on first use and reused by every later decoding step (they depend
    on the source alone)."""

    def __init__(self, states: torch.Tensor, mask: torch.Tensor | None = None):
        self.states = states
        self.mask = mask.bool() if mask is not None and not bool(mask.all()) else None
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def attention_mask(self) -> torch.Tensor | None:
        """(batch, 1, 1, source) "may attend" mask for SDPA, None when no token is padding."""
        return None if self.mask is None else self.mask[:, None, None, :]

    def keys_values(self, layer: int, project) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s keys and values, `project(states)` computed once. While gradients are on
        (training) nothing is kept: activation checkpointing recomputes the projection in backward."""
        if torch.is_grad_enabled() and self.states.requires_grad:
            return project(self.states)
        if layer not in self.kv:
            self.kv[layer] = project(self.states)
        return self.kv[layer]

    def select(self, rows: torch.Tensor | list[int]) -> "EncoderMemory":
        """A memory of some rows (repeated rows allowed: beams of one source), keeping the projections."""
        rows = torch.as_tensor(rows, device=self.states.device)
        out = EncoderMemory(self.states[rows])
        out.mask = self.mask[rows] if self.mask is not None else None
        out.kv = {i: (k[rows], v[rows]) for i, (k, v) in self.kv.items()}
        return out

    @staticmethod
    def stack(memories: list["EncoderMemory"]) -> "EncoderMemory":
        """One batch of single-row memories of different source lengths (right-padded, masked);
        every projection present in all of them is carried over."""
        longest = max(m.states.shape[1] for m in memories)

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            short = longest - t.shape[dim]
            if not short:
                return t
            shape = list(t.shape)
            shape[dim] = short
            return torch.cat([t, t.new_zeros(shape)], dim)

        out = EncoderMemory(torch.cat([pad(m.states, 1) for m in memories]))
        lengths = [m.states.shape[1] for m in memories]
        if any(n != longest for n in lengths) or any(m.mask is not None for m in memories):
            mask = torch.zeros(len(memories), longest, dtype=torch.bool, device=out.states.device)
            for i, m in enumerate(memories):
                mask[i, :lengths[i]] = True if m.mask is None else m.mask[0]
            out.mask = mask
        shared = set.intersection(*(set(m.kv) for m in memories))
        out.kv = {i: (torch.cat([pad(m.kv[i][0], 2) for m in memories]), torch.cat([pad(m.kv[i][1], 2) for m in memories]))
                  for i in shared}
        return out
