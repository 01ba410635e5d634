"""Tiny random-weight Hugging Face models of every supported family, built with transformers
from its own config classes (the reference implementation), for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 256


def hf_configs() -> dict:
    import transformers as tf

    # initializer_range 0.3: random models with the usual 0.02 (tied ones above all) repeat one
    # token under greedy decoding, which would make the greedy-parity test trivially true
    small = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=128, initializer_range=0.3)
    return {
        "gpt2": tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                              bos_token_id=0, eos_token_id=0, initializer_range=0.3),
        # GQA, untied head, plain rope
        "llama-gqa": tf.LlamaConfig(**small, num_key_value_heads=2, tie_word_embeddings=False),
        # tied embeddings and Llama 3 rope scaling
        "llama3-tied": tf.LlamaConfig(**small, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=500000.0,
                                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
        "llama-linear": tf.LlamaConfig(**small, num_key_value_heads=4, rope_scaling={"rope_type": "linear", "factor": 4.0}),
        "llama-dynamic": {**small, "model_type": "llama", "max_position_embeddings": 24,
                          "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
        # sliding window shorter than the test sequences
        "mistral": tf.MistralConfig(**small, num_key_value_heads=2, sliding_window=12),
        # q/k/v bias, tied embeddings
        "qwen2": tf.Qwen2Config(**small, num_key_value_heads=2, tie_word_embeddings=True),
        # per-layer sliding window (layers >= max_window_layers)
        "qwen2-window": tf.Qwen2Config(**{**small, "num_hidden_layers": 3}, num_key_value_heads=2,
                                       use_sliding_window=True, sliding_window=10, max_window_layers=1),
        # mixtures of experts: Mixtral (top-2 of 4, renormalised, a sliding window) and Qwen2-MoE
        # (top-2 of 4 not renormalised, a shared expert behind its sigmoid gate, tied embeddings)
        "mixtral": tf.MixtralConfig(**small, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                                    sliding_window=12),
        "qwen2-moe": tf.Qwen2MoeConfig(**small, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                                       moe_intermediate_size=48, shared_expert_intermediate_size=80,
                                       tie_word_embeddings=True),
        # renormalised top-3, no q/k/v bias, an untied head
        "qwen2-moe-norm": tf.Qwen2MoeConfig(**small, num_key_value_heads=4, num_experts=6, num_experts_per_tok=3,
                                            moe_intermediate_size=32, shared_expert_intermediate_size=40,
                                            norm_topk_prob=True, qkv_bias=False, tie_word_embeddings=False),
    }


def build_hf_model(name: str, out: Path, seed: int = 0) -> Path:
    """Save a random transformers model of variant `name` to `out` and return it."""
    import transformers as tf

    cfg = hf_configs()[name]
    if isinstance(cfg, dict):  # dynamic NTK: the config class insists max_position_embeddings be normal
        kind = cfg.pop("model_type")
        cfg = tf.AutoConfig.for_model(kind, **cfg)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    with torch.no_grad():  # random, not-small biases and norm weights, so that they matter
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n or "ln_" in n:
                p.normal_(0.0 if n.endswith("bias") else 1.0, 0.1)
    model.save_pretrained(out)
    return out
