"""T5-style Unigram (SentencePiece) pipelines, built the way transformers 5's `T5Tokenizer` builds them.

transformers never uses a T5 tokenizer.json as is: `T5Tokenizer.__init__` keeps only the
`[piece, score]` vocabulary (and a `Precompiled` SentencePiece normalizer, if the file has one) and
rebuilds the rest:

* model `Unigram(vocab, unk_id=2, byte_fallback=False)`: the unknown id is 2 whatever the file says;
* normalizer: the `Precompiled` charsmap found in tokenizer.json (alone, or the first inside a
  `Sequence`), else none - any other normalizer (`Replace`, `Lowercase`, ...) is dropped;
* pre-tokenizer `WhitespaceSplit` + `Metaspace("▁", prepend_scheme="always", split=True)`, so runs
  of spaces, tabs and newlines all become one word boundary (T5 cannot encode a newline);
* decoder `Metaspace("▁", prepend_scheme="always", split=True)`;
* post-processor "$A </s>" / "$A </s> $B </s>" (all type id 0), set after the special tokens are
  added. The template names the literal "</s>", with the id of whatever `eos_token` is.

The sentinels `<extra_id_0>` ... `<extra_id_{N-1}>` (N = `extra_ids`, default 100) are added as
special tokens unless tokenizer_config.json lists its own extra special tokens (`t5_extra_tokens`).
T5 keeps them at the end of the piece vocabulary in reverse order, so `<extra_id_0>` is the last id.

Loading (`hf_files`), training (`train`) and saving (`Tokenizer.save`) all go through `build_t5`,
so a tokenizer llmkit trains is, by construction, the one transformers rebuilds from its files.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

# Hub class names that transformers 5 builds with T5Tokenizer.__init__, and its special-token defaults.
T5_CLASSES = ("T5Tokenizer",)
T5_SPECIAL_TOKENS: dict[str, str] = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
T5_UNK_ID = 2  # hard-coded by T5Tokenizer: <pad>=0, </s>=1, <unk>=2
DEFAULT_EXTRA_IDS = 100
_SENTINEL_MARK = "<extra_id_"


def sentinel_token(i: int) -> str:
    """The i-th span-corruption sentinel, "<extra_id_i>"."""
    return f"{_SENTINEL_MARK}{i}>"


def sentinel_tokens(n: int = DEFAULT_EXTRA_IDS) -> list[str]:
    """`<extra_id_0>` ... `<extra_id_{n-1}>`, in T5Tokenizer's order."""
    return [sentinel_token(i) for i in range(n)]


def precompiled_charsmap(normalizer: dict[str, Any] | None) -> bytes | None:
    """The SentencePiece charsmap transformers keeps from tokenizer.json's normalizer: that of a
    `Precompiled` normalizer, alone or (first) among a Sequence's direct members."""
    if not normalizer:
        return None
    members = (normalizer.get("normalizers") or []) if normalizer.get("type") == "Sequence" else [normalizer]
    for member in members:
        if isinstance(member, dict) and member.get("type") == "Precompiled" and "precompiled_charsmap" in member:
            return base64.b64decode(member["precompiled_charsmap"])
    return None


def build_t5(vocab: list[tuple[str, float]], charsmap: bytes | None = None) -> BackendTokenizer:
    """T5Tokenizer's backend without its post-processor (see `t5_post_processor`)."""
    if len(vocab) <= T5_UNK_ID:
        raise ValueError(f"a T5 vocabulary needs <pad>, </s> and <unk> as ids 0-2; this one has {len(vocab)} pieces")
    tok = BackendTokenizer(models.Unigram([(str(p), float(s)) for p, s in vocab], unk_id=T5_UNK_ID,
                                          byte_fallback=False))
    if charsmap is not None:
        tok.normalizer = normalizers.Precompiled(charsmap)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return tok


def build_t5_from_json(raw: dict[str, Any]) -> BackendTokenizer | None:
    """`build_t5` from a parsed tokenizer.json, or None when its model is not a Unigram (then
    transformers' rebuild would fail and we leave the file as it is)."""
    model = raw.get("model") or {}
    vocab = model.get("vocab")
    if model.get("type") not in (None, "Unigram") or not isinstance(vocab, list) or not vocab \
            or not isinstance(vocab[0], (list, tuple)):
        return None
    return build_t5([(p, s) for p, s in vocab], precompiled_charsmap(raw.get("normalizer")))


def t5_post_processor(eos_id: int | None) -> processors.TemplateProcessing:
    """"$A </s>" and "$A </s> $B </s>", as T5Tokenizer sets it (type ids all 0)."""
    if eos_id is None:
        raise ValueError("a T5 tokenizer needs an eos_token: T5Tokenizer appends it to every sequence")
    return processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                         special_tokens=[("</s>", eos_id)])


def t5_extra_tokens(config: dict[str, Any], special_map: dict[str, Any], legacy: bool) -> list[Any] | dict[str, Any]:
    """The extra special tokens T5Tokenizer ends up with, from tokenizer_config.json (and, when it has
    no `added_tokens_decoder`, special_tokens_map.json), as transformers 5 resolves them:

    * `additional_special_tokens` in the config is renamed `extra_special_tokens` when that is empty;
    * a config list wins as is: T5's own sentinels are then not added (nor checked);
    * otherwise T5Tokenizer's list: special_tokens_map.json's `additional_special_tokens` (with the
      `extra_ids` sentinels appended when it names none), else the sentinels alone.
    """
    cfg = dict(config)
    if "additional_special_tokens" in cfg and not cfg.get("extra_special_tokens"):
        cfg["extra_special_tokens"] = cfg.pop("additional_special_tokens")
    if legacy:
        for key, value in special_map.items():
            if key == "extra_special_tokens" and isinstance(value, list):
                merged = list(cfg.get("extra_special_tokens") or [])
                value = merged + [t for t in value if t not in merged]
            cfg[key] = value
    extra_ids = int(cfg.get("extra_ids", DEFAULT_EXTRA_IDS))
    listed = cfg.get("additional_special_tokens")
    if listed is not None:  # T5Tokenizer.__init__'s check, made even when the result is unused
        named = [t for t in listed if _SENTINEL_MARK in str(t)]
        if not named:
            listed = list(listed) + sentinel_tokens(extra_ids)
        elif extra_ids > 0 and extra_ids != len(named):
            raise ValueError(f"tokenizer files give extra_ids={extra_ids} but list {len(named)} <extra_id_N> tokens in "
                             f"additional_special_tokens; T5Tokenizer (transformers) refuses this: make them agree")
    else:
        listed = sentinel_tokens(extra_ids)
    if "extra_special_tokens" in cfg:
        return cfg["extra_special_tokens"] or []
    return listed


def t5_config(backend: BackendTokenizer, special_tokens: dict[str, str],
              extra_special_tokens: list[str]) -> dict[str, Any] | None:
    """The tokenizer_config.json entries (`extra_ids`) with which transformers' T5Tokenizer rebuilds
    exactly `backend`, or None when it would build something else (then the files must say "use
    tokenizer.json as is")."""
    if not isinstance(backend.model, models.Unigram) or special_tokens.get("eos_token") is None:
        return None
    raw = json.loads(backend.to_str())
    if raw["model"].get("unk_id") != T5_UNK_ID or raw["model"].get("byte_fallback"):
        return None
    norm = raw.get("normalizer")
    charsmap = precompiled_charsmap(norm)
    if norm is not None and (charsmap is None or norm.get("type") != "Precompiled"):
        return None  # transformers would drop (part of) this normalizer
    expected = build_t5(raw["model"]["vocab"][:T5_UNK_ID + 1])
    post = backend.post_processor
    eos_id = backend.token_to_id(special_tokens["eos_token"])
    if (eos_id is None or post is None or post.__getstate__() != t5_post_processor(eos_id).__getstate__()
            or backend.pre_tokenizer is None or backend.decoder is None
            or backend.pre_tokenizer.__getstate__() != expected.pre_tokenizer.__getstate__()
            or backend.decoder.__getstate__() != expected.decoder.__getstate__()):
        return None
    sentinels = [t for t in extra_special_tokens if _SENTINEL_MARK in t]
    return {"extra_ids": len(sentinels)}
