"""llmkit: the whole life of a large language model in one hackable PyTorch codebase.

The public API is re-exported here lazily, so that ``import llmkit`` stays cheap and
each room can be imported on its own.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ModelConfig": "llmkit.models.config",
    "preset": "llmkit.models.config",
    "list_presets": "llmkit.models.config",
    "Transformer": "llmkit.models.transformer",
    "KVCache": "llmkit.models.cache",
    "Tokenizer": "llmkit.tokenizer",
    "LLM": "llmkit.infer.llm",
    "LocalLLM": "llmkit.infer.llm",
    "GenerationConfig": "llmkit.infer.sampling",
    "load": "llmkit.infer.llm",
    "connect": "llmkit.infer.remote",
    "RemoteLLM": "llmkit.infer.remote",
    "ChatReply": "llmkit.infer.tool_calls",
    "ToolCall": "llmkit.infer.tool_calls",
    "Tool": "llmkit.apps.tools",
    "generate_json": "llmkit.apps.structured",
    "Prompt": "llmkit.apps.prompts",
    "few_shot": "llmkit.apps.prompting",
    "chain_of_thought": "llmkit.apps.prompting",
    "self_consistency": "llmkit.apps.prompting",
    "ReActAgent": "llmkit.apps.agents",
    "pal": "llmkit.apps.pal",
    "Chain": "llmkit.apps.chains",
    "Memory": "llmkit.apps.memory",
    "build_index": "llmkit.apps.rag.workflow",
    "open_retriever": "llmkit.apps.rag.workflow",
    "Retriever": "llmkit.apps.rag.retrieval",
    "resolve_model": "llmkit.models.resolve",
    "load_with_adapters": "llmkit.pipelines.adapters",
    "merge_adapter": "llmkit.pipelines.adapters",
    "quantize_checkpoint": "llmkit.pipelines.quantize",
    "quantize_model": "llmkit.quant.weight_only",
    "PretrainRecipe": "llmkit.pipelines.pretrain",
    "pretrain": "llmkit.pipelines.pretrain",
    "AblationRecipe": "llmkit.pipelines.ablate",
    "ablate": "llmkit.pipelines.ablate",
    "FinetuneRecipe": "llmkit.pipelines.finetune",
    "finetune": "llmkit.pipelines.finetune",
    "DPORecipe": "llmkit.pipelines.dpo",
    "dpo": "llmkit.pipelines.dpo",
    "RewardRecipe": "llmkit.pipelines.reward",
    "reward": "llmkit.pipelines.reward",
    "PPORecipe": "llmkit.pipelines.rl",
    "ppo": "llmkit.pipelines.rl",
    "GRPORecipe": "llmkit.pipelines.rl",
    "grpo": "llmkit.pipelines.rl",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
