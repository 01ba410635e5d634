"""Virtual tokens: prefix tuning (Li & Liang 2021) and prompt tuning (Lester et al. 2021).

Both put learned tokens in front of every input, through the KV cache: the model's caches start
with them (`Transformer.new_cache` asks `model.virtual_tokens` to fill its first slots), so
generation, scoring and training all see them the same way.

- **Prefix tuning** learns the keys and values themselves: a (tokens, layers·2·kv_heads·head_dim)
  table (PEFT's ``prompt_embeddings`` without the reparametrising MLP), written into every layer's
  cache slots. Keys are used as they are (no rotary rotation), as in PEFT / transformers.
- **Prompt tuning** learns input embeddings (tokens, dim), which run through the frozen model
  into the cache like a prompt, optionally initialised from the embeddings of a text.

In training a `ConcatCache` holds them (in-place writes into one preallocated buffer would break
autograd); in inference the usual preallocated `KVCache`.
"""

from __future__ import annotations

import torch
from torch import nn


class ConcatCache:
    """A KV cache that grows by concatenation: the same interface as `KVCache` (record, update,
    advance, length), differentiable end to end."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.length = 0
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.valid: torch.Tensor | None = None

    def record(self, attention_mask: torch.Tensor | None, t: int) -> torch.Tensor | None:
        padded = attention_mask is not None and not bool(attention_mask.all())
        if padded and self.valid is None:
            self.valid = torch.ones(self.batch_size, self.length, dtype=torch.bool, device=attention_mask.device)
        if self.valid is not None:
            new = attention_mask.bool() if attention_mask is not None else \
                torch.ones(self.batch_size, t, dtype=torch.bool, device=self.valid.device)
            self.valid = torch.cat((self.valid, new), dim=1)
        return self.valid

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer in self.k:
            k, v = torch.cat((self.k[layer], k), dim=2), torch.cat((self.v[layer], v), dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def advance(self, t: int) -> None:
        self.length += t


class PrefixEncoder(nn.Module):
    """Learned keys and values for every layer (PEFT's layout: layer-major, keys before values)."""

    kind = "prefix"

    def __init__(self, num_tokens: int, n_layers: int, n_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_tokens, self.n_layers, self.n_kv_heads, self.head_dim = num_tokens, n_layers, n_kv_heads, head_dim
        self.embedding = nn.Embedding(num_tokens, n_layers * 2 * n_kv_heads * head_dim)

    def fill(self, model: nn.Module, cache, batch_size: int) -> None:
        w = self.embedding.weight
        kv = w.view(self.num_tokens, self.n_layers * 2, self.n_kv_heads, self.head_dim).permute(1, 2, 0, 3)
        dtype = model.dtype
        for layer in range(self.n_layers):
            k = kv[2 * layer].unsqueeze(0).expand(batch_size, -1, -1, -1).to(dtype)
            v = kv[2 * layer + 1].unsqueeze(0).expand(batch_size, -1, -1, -1).to(dtype)
            cache.update(layer, k, v)
        cache.advance(self.num_tokens)


class PromptEmbedding(nn.Module):
    """Learned input embeddings run through the frozen model ahead of the real tokens."""

    kind = "prompt"

    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.embedding = nn.Embedding(num_tokens, dim)

    def fill(self, model: nn.Module, cache, batch_size: int) -> None:
        emb = self.embedding.weight.unsqueeze(0).expand(batch_size, -1, -1).to(model.dtype)
        model.model(None, None, None, cache, inputs_embeds=emb)


class VirtualTokens(nn.Module):
    """The named virtual-token adapters of one model and which one is active."""

    def __init__(self):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.active: str | None = None

    @property
    def current(self) -> nn.Module | None:
        return self.adapters[self.active] if self.active in self.adapters else None

    @property
    def num_tokens(self) -> int:
        return self.current.num_tokens if self.current is not None else 0

    def prefill(self, model: nn.Module, cache) -> None:
        if self.current is not None:
            self.current.fill(model, cache, cache.batch_size)

    def training_cache(self, model: nn.Module, batch_size: int) -> ConcatCache | None:
        if self.current is None:
            return None
        cache = ConcatCache(batch_size)
        self.current.fill(model, cache, batch_size)
        return cache


def _virtual(model: nn.Module) -> VirtualTokens:
    if getattr(model, "virtual_tokens", None) is None:
        model.virtual_tokens = VirtualTokens()
    return model.virtual_tokens


def apply_prefix_tuning(model: nn.Module, num_tokens: int = 16, name: str = "default",
                        init_std: float | None = None) -> PrefixEncoder:
    """Add learned per-layer keys/values (`num_tokens` of them) and freeze the model."""
    from .lora import freeze

    if num_tokens < 1:
        raise ValueError(f"prefix.num_tokens={num_tokens} must be at least 1")
    cfg = model.config
    freeze(model)
    enc = PrefixEncoder(num_tokens, cfg.n_layers, cfg.n_kv_heads, cfg.head_dim).to(model.device)
    if init_std is not None:
        nn.init.normal_(enc.embedding.weight, std=init_std)
    vt = _virtual(model)
    vt.adapters[name] = enc
    vt.active = name
    return enc


def apply_prompt_tuning(model: nn.Module, num_tokens: int = 16, name: str = "default",
                        init_ids: list[int] | None = None) -> PromptEmbedding:
    """Add `num_tokens` learned input embeddings and freeze the model. With `init_ids` (a
    tokenised text) they start as those tokens' embeddings, repeated or cut to fit."""
    from .lora import freeze

    if num_tokens < 1:
        raise ValueError(f"prompt.num_tokens={num_tokens} must be at least 1")
    freeze(model)
    emb = PromptEmbedding(num_tokens, model.config.dim).to(model.device)
    table = model.model.embed_tokens.weight
    with torch.no_grad():
        if init_ids:
            ids = (list(init_ids) * (num_tokens // len(init_ids) + 1))[:num_tokens]
            emb.embedding.weight.copy_(table[torch.tensor(ids, device=table.device)])
        else:  # random, at the scale of the real embeddings
            nn.init.normal_(emb.embedding.weight, std=float(table.std()))
    vt = _virtual(model)
    vt.adapters[name] = emb
    vt.active = name
    return emb
