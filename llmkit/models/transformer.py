"""One `Transformer` for every family, decoders and encoders; the differences are `ModelConfig` values.

``Transformer(config)(input_ids)`` returns logits of shape (batch, seq, vocab). With a
`KVCache` the same call prefills the cache and then decodes one (or a few) tokens per step.
Submodule names match Hugging Face Llama (``model.layers.0.self_attn.q_proj``, ``lm_head``),
so state dicts, PEFT adapter files and HF checkpoints share one naming.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .cache import EncoderMemory, KVCache
from .config import ModelConfig
from .loss import cross_entropy, linear_cross_entropy
from .layers import (AttentionMask, Block, HeadTransform, RelativePositionBias, RotaryEmbedding, linear, make_norm,
                     sinusoidal_positions)


class ContextLengthError(ValueError):
    pass


class Decoder(nn.Module):
    """Embeddings, the stack of blocks and the final norm (HF's ``model.`` prefix); with
    ``causal=False`` the same stack is an encoder (BERT's ``bert.``), whose post-norm blocks put
    the norm on the embeddings instead of at the end, and whose pooler serves classification."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        if config.positions == "learned":
            self.embed_positions = nn.Embedding(config.max_seq_len, config.dim)
        if config.type_vocab_size:
            self.embed_types = nn.Embedding(config.type_vocab_size, config.dim)
        if config.post_norm:
            self.embed_norm = make_norm(config)
        self.rotary = RotaryEmbedding(config) if config.positions == "rope" else None
        self.relative = RelativePositionBias(config) if config.positions == "relative" else None
        self.drop = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = nn.Identity() if config.post_norm else make_norm(config)
        if config.pooler:
            self.pooler = nn.Linear(config.dim, config.dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                inputs_embeds: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, memory: EncoderMemory | None = None) -> torch.Tensor:
        """Hidden states (batch, seq, dim). `memory` is an encoder's output the blocks cross-attend
        to (an encoder-decoder's decoder)."""
        cfg = self.config
        b, t = input_ids.shape if inputs_embeds is None else inputs_embeds.shape[:2]
        past = cache.length if cache is not None else 0
        total = past + t
        if cfg.positions == "learned" and total > cfg.max_seq_len:
            raise ContextLengthError(
                f"{total} positions exceed the model's context window max_seq_len={cfg.max_seq_len} "
                "(learned position embeddings cannot go further): shorten the input"
            )
        device = input_ids.device if inputs_embeds is None else inputs_embeds.device
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != b or attention_mask.shape[1] not in (t, total):
                raise ValueError(f"attention_mask has shape {list(attention_mask.shape)}: give (batch, new tokens) = "
                                 f"[{b}, {t}] or (batch, cached + new tokens) = [{b}, {total}]")
            attention_mask = attention_mask[:, -t:]

        # which keys hold real tokens (None: all of them)
        if cache is not None:
            key_valid = cache.record(attention_mask, t)
        elif attention_mask is not None and not bool(attention_mask.all()):
            key_valid = attention_mask.bool()
        else:
            key_valid = None

        if segment_ids is not None:  # packed sequences: positions restart at every segment
            if cache is not None or attention_mask is not None:
                raise ValueError("segment_ids (packed examples) cannot be combined with a cache or an attention_mask")
            idx = torch.arange(t, device=device).expand(b, t)
            starts = torch.ones_like(segment_ids, dtype=torch.bool)
            starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
            if position_ids is None:
                position_ids = idx - torch.where(starts, idx, 0).cummax(-1).values
        if position_ids is None:
            if key_valid is None:
                position_ids = torch.arange(past, total, device=device).expand(b, t)
            else:  # count only real tokens, so left padding does not shift positions
                position_ids = (key_valid.long().cumsum(-1) - 1)[:, past:total].clamp(min=0)

        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if cfg.positions == "learned":
            x = x + self.embed_positions(position_ids)
        elif cfg.positions == "sinusoidal":
            x = x + sinusoidal_positions(position_ids, cfg.dim, x.dtype)
        if cfg.type_vocab_size:  # sentence A (0) unless told otherwise
            if token_type_ids is None:
                token_type_ids = torch.zeros((b, t), dtype=torch.long, device=device)
            x = x + self.embed_types(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids were given but the model has no token-type embeddings (type_vocab_size=0)")
        if cfg.post_norm:
            x = self.embed_norm(x)
        x = self.drop(x)
        rope = self.rotary(position_ids, x.dtype) if self.rotary is not None else None

        bias = None
        if self.relative is not None:  # one learned bias for every layer, from absolute positions as T5 does
            bias = self.relative(torch.arange(past, total, device=device), torch.arange(total, device=device))
        masks: dict[int | None, AttentionMask] = {}
        # which new tokens are real, for a mixture of experts' router losses (padding left out)
        tokens = attention_mask.bool() if cfg.is_moe and attention_mask is not None else None
        for layer in self.layers:
            window = cfg.sliding_window_for(layer.self_attn.layer_idx)
            if window not in masks:
                if segment_ids is None:
                    masks[window] = build_mask(t, past, key_valid, cfg.causal, window, device)
                else:  # attention stays inside each packed example
                    every = torch.ones(b, t, dtype=torch.bool, device=device)
                    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
                    masks[window] = AttentionMask(mask=build_mask(t, 0, every, cfg.causal, window, device).mask & same)
                if bias is not None:
                    masks[window] = with_bias(masks[window], bias.to(x.dtype), t, past)
                masks[window].tokens = tokens
            x = layer(x, rope, masks[window], cache, memory)
        if cache is not None:
            cache.advance(t)
        return self.norm(x)


def build_mask(t: int, past: int, key_valid: torch.Tensor | None, causal: bool, window: int | None,
               device) -> AttentionMask:
    """The cheapest correct attention mask for `t` new queries after `past` cached keys.

    Fast paths avoid materialising a mask: a fresh causal prefill uses SDPA's causal flag, and a
    single decoding query without padding sees every key (from the window start on)."""
    total = past + t
    if key_valid is None:
        if not causal and window is None:
            return AttentionMask()
        if causal and t == 1:
            return AttentionMask(key_start=max(0, total - window) if window else 0)
        if causal and past == 0 and (window is None or total <= window):
            return AttentionMask(is_causal=True)
    q_pos = torch.arange(past, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = torch.ones(t, total, dtype=torch.bool, device=device)
    if causal:
        allowed &= k_pos <= q_pos
    if window is not None:
        allowed &= (q_pos - k_pos) < window
        if not causal:
            allowed &= (k_pos - q_pos) < window
    allowed = allowed[None, None]
    if key_valid is not None:
        # a padding query may see only itself: a fully masked row would give NaN
        allowed = (allowed & key_valid[:, None, None, :]) | (k_pos == q_pos)
    return AttentionMask(mask=allowed)


def with_bias(mask: AttentionMask, bias: torch.Tensor, t: int, past: int) -> AttentionMask:
    """`mask` as an additive float mask carrying `bias` (1, heads, queries, keys): the bias where
    attention is allowed, -inf where it is not (SDPA adds a float mask to the logits)."""
    total = bias.shape[-1]
    if mask.mask is not None:
        allowed = mask.mask
    else:
        allowed = torch.ones(t, total, dtype=torch.bool, device=bias.device)
        if mask.is_causal:
            allowed = allowed.tril(diagonal=past)
        allowed[:, :mask.key_start] = False
        allowed = allowed[None, None]
    return AttentionMask(mask=bias.masked_fill(~allowed, float("-inf")))


class Transformer(nn.Module):
    """A language model: ``model`` (the `Decoder` stack) and ``lm_head``, which predicts the next
    token (causal) or the masked ones (an encoder with ``head_transform``, BERT's MLM head). With
    ``head="none"`` there is no ``lm_head`` and the model returns hidden states (HF's BertModel)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        # an encoder-decoder's encoder: its own stack, the same token embeddings (T5's `shared`)
        self.encoder = Decoder(config.encoder_config()) if config.is_seq2seq else None
        if self.encoder is not None:
            self.encoder.embed_tokens = self.model.embed_tokens
        self.head_transform = HeadTransform(config) if config.head == "lm" and config.head_transform else None
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=config.head_bias) if config.head == "lm" else None
        if config.tie_embeddings and self.lm_head is not None:
            self.lm_head.weight = self.model.embed_tokens.weight
        # Learned virtual tokens (prefix / prompt tuning, set by llmkit.peft) fill the first slots of
        # every cache; the model itself knows only that something may prefill its caches.
        self.virtual_tokens: nn.Module | None = None
        if self.model.embed_tokens.weight.is_meta:  # built to receive a checkpoint: nothing to initialise
            return
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream
        std = config.init_std / math.sqrt(2 * config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                logits_to_keep: int = 0, segment_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                encoder_input_ids: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                memory: EncoderMemory | None = None) -> torch.Tensor:
        """Logits (batch, seq, vocab); hidden states (batch, seq, dim) for a model without a head. `attention_mask` (batch, seq) marks real tokens with 1 and
        (left) padding with 0; `logits_to_keep=k` computes the head for the last k positions only;
        `segment_ids` (batch, seq) packs several examples in a row, each attending only to itself.

        With `labels` (batch, seq; aligned with the inputs, -100 where a position does not count)
        it returns the mean next-token cross-entropy instead, computed without ever holding the
        logits (`linear_cross_entropy`): training uses this, for next-token and masked-token
        prediction alike (the objective decides which positions count). `token_type_ids` are
        BERT's segment ids (default all 0). An encoder-decoder reads its source from
        `encoder_input_ids` (with `encoder_attention_mask`), or from `memory`, the `encode`d source
        computed once (an `EncoderMemory` from `memory()`, which also keeps the cross-attention
        keys and values between decoding steps); `input_ids` are then the decoder's tokens."""
        if cache is None and self.virtual_tokens is not None:
            cache = self.virtual_tokens.training_cache(self, input_ids.shape[0])
        if self.encoder is not None and memory is None:
            if encoder_input_ids is None:
                raise ValueError("an encoder-decoder needs its source: give encoder_input_ids (or memory)")
            memory = self.memory(encoder_input_ids, encoder_attention_mask)
        h = self.model(input_ids, attention_mask, position_ids, cache, segment_ids=segment_ids,
                       token_type_ids=token_type_ids, memory=memory)
        if self.config.scale_tied_head:
            h = h * self.config.dim ** -0.5
        if self.lm_head is None:
            if labels is not None:
                raise ValueError("this model has no output head (head='none'): it gives hidden states, not a loss")
            return h
        if self.head_transform is not None:
            h = self.head_transform(h)
        if labels is not None:
            head = self.lm_head
            if type(head) is nn.Linear:  # a plain head fuses; a wrapped one (LoRA on lm_head) does not
                return linear_cross_entropy(h, head.weight, labels, bias=head.bias)
            return cross_entropy(head(h), labels)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return linear(self.lm_head, h)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """An encoder-decoder's encoder output (batch, source, dim), which the decoder cross-attends to."""
        if self.encoder is None:
            raise ValueError("encode() is for encoder-decoders (n_encoder_layers > 0)")
        return self.encoder(input_ids, attention_mask)

    def memory(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> EncoderMemory:
        """The encoded source as the decoder reads it, to pass as `memory=` at every decoding step."""
        return EncoderMemory(self.encode(input_ids, attention_mask), attention_mask)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: KVCache | None = None, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (batch, seq, dim), for heads other than the LM head and for embeddings
        (an encoder-decoder's: its encoder's, which read the text whole)."""
        if self.encoder is not None and cache is None:
            return self.encode(input_ids, attention_mask)
        if cache is None and self.virtual_tokens is not None:
            cache = self.virtual_tokens.training_cache(self, input_ids.shape[0])
        return self.model(input_ids, attention_mask, None, cache, token_type_ids=token_type_ids)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """A cache for `max_len` tokens (default: the context window), plus the virtual tokens'
        slots, already filled with them, when prefix or prompt tuning is active."""
        extra = self.virtual_tokens.num_tokens if self.virtual_tokens is not None else 0
        if max_len is not None:
            max_len += extra
        cache = KVCache(self.config, batch_size, max_len, device=self.device, dtype=self.dtype)
        if extra:
            self.virtual_tokens.prefill(self, cache)
        return cache

    # ----------------------------------------------------------------------- sizes
    def num_parameters(self, embeddings: bool = True) -> int:
        """Distinct parameters (a tied head counts once)."""
        params = {id(p): p for p in self.parameters()}
        n = sum(p.numel() for p in params.values())
        if not embeddings:
            n -= self.model.embed_tokens.weight.numel()
            for name in ("embed_positions", "embed_types"):
                if hasattr(self.model, name):
                    n -= getattr(self.model, name).weight.numel()
            if self.lm_head is not None:
                n -= self.lm_head.weight.numel() * (not self.config.tie_embeddings)
                n -= self.lm_head.bias.numel() if self.lm_head.bias is not None else 0
        return n

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> int:
        return self.config.flops_per_token(seq_len, training)

    def weight_bytes(self, dtype: str = "fp32") -> int:
        """Bytes of the weights stored as fp32 / fp16 / bf16 / int8 / int4 (see `ModelConfig.weight_bytes`)."""
        return self.config.weight_bytes(dtype)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device  # the head may be quantised (no .weight)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype
