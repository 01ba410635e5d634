"""Tokenizers described by GGUF metadata (llama.cpp's `tokenizer.ggml.*` keys), in both directions.

A GGUF file carries no tokenizer.json: the vocabulary, merges, token types, special-token ids,
the add-bos flag, the name of the pre-tokenizer (`tokenizer.ggml.pre`) and the chat template are
metadata. `tokenizer_from_gguf` builds a `Tokenizer` from them:

- ``gpt2`` (byte-level BPE): tokens and merges as written; the text is split first by the
  pre-tokenizer llama.cpp names (its regular expressions are the ground truth, see PRE_TOKENIZERS).
- ``llama`` (SentencePiece-style BPE): tokens with "▁" for spaces, byte-fallback tokens
  ``<0x..>``; merges from the file, or recovered from the scores when the file has none.

`gguf_tokenizer_metadata` writes the same keys back from a `Tokenizer` (for GGUF export).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from llmkit.tokenizer.tokenizer import Tokenizer


class GGUFTokenizerError(ValueError):
    """The GGUF metadata describes a tokenizer llmkit cannot build; the message says which field."""


# llama.cpp's token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizers by their llama.cpp name (`tokenizer.ggml.pre`): the regular expressions llama.cpp
# applies before BPE, in order ("gpt2" is byte-level BPE's own GPT-2 expression).
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_DIGITS = r"\p{N}"
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    **{name: ("gpt2",) for name in ("default", "gpt-2", "gpt2", "mpt", "olmo", "jais", "trillion")},
    **{name: (_DIGITS, "gpt2") for name in ("starcoder", "refact", "smollm", "command-r", "codeshell", "exaone",
                                            "minerva-7b")},
    **{name: (_LLAMA3,) for name in ("llama3", "llama-bpe", "llama-v3", "smaug-bpe", "falcon3", "dbrx")},
    **{name: (_QWEN2,) for name in ("qwen2", "deepseek-r1-qwen")},
}


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (byte-level BPE's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    name = pre or "default"
    if name not in PRE_TOKENIZERS:
        raise GGUFTokenizerError(
            f"tokenizer.ggml.pre={name!r} is a pre-tokenizer llmkit does not know, so it cannot split text the way "
            f"this vocabulary was trained; supported: {', '.join(sorted(PRE_TOKENIZERS))}")
    steps: list[pre_tokenizers.PreTokenizer] = []
    for rule in PRE_TOKENIZERS[name]:
        if rule == "gpt2":
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        else:
            steps.append(pre_tokenizers.Split(Regex(rule), behavior="isolated"))
    if PRE_TOKENIZERS[name][-1] != "gpt2":
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)


def _merges_from_scores(tokens: Sequence[str], scores: Sequence[float], skip: set[int]) -> list[tuple[str, str]]:
    """SentencePiece files list no merges: every way of cutting a token into two vocabulary
    tokens is a merge, ranked by the merged token's score (best first), ties by the pieces' ids."""
    vocab = {t: i for i, t in enumerate(tokens) if i not in skip}
    found = []
    for token, i in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                found.append((-scores[i], vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for *_, left, right in found]


def tokenizer_from_gguf(meta: Mapping[str, Any], context_length: int | None = None) -> Tokenizer:
    """A `Tokenizer` from GGUF metadata (`meta` maps key -> value, arrays as lists)."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if kind is None or tokens is None:
        raise GGUFTokenizerError("the GGUF metadata has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens): "
                                 "llmkit needs the vocabulary to encode text")
    tokens = list(tokens)
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise GGUFTokenizerError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")

    def special(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise GGUFTokenizerError(f"tokenizer.ggml.{key}_token_id={i} is outside the vocabulary of {len(tokens)}")
        return tokens[int(i)]

    control = {i for i, t in enumerate(types) if t == CONTROL}
    if kind == "gpt2":
        alphabet = _byte_alphabet()
        letters = set(alphabet.values())
        # a token outside the byte alphabet (other than control tokens, which are matched whole)
        # is written as raw text by some converters: spell it in the alphabet
        spelled = [t if i in control or set(t) <= letters else "".join(alphabet[b] for b in t.encode("utf-8"))
                   for i, t in enumerate(tokens)]
        vocab = {t: i for i, t in enumerate(spelled)}
        merges_raw = meta.get("tokenizer.ggml.merges")
        if merges_raw is None:
            raise GGUFTokenizerError("tokenizer.ggml.model='gpt2' needs tokenizer.ggml.merges, which this file lacks")
        merges = []
        for n, m in enumerate(merges_raw):
            left, sep, right = m.partition(" ")
            if not sep:
                raise GGUFTokenizerError(f"tokenizer.ggml.merges[{n}]={m!r} is not two tokens separated by a space")
            merges.append((left, right))
        backend = BackendTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        backend.pre_tokenizer = _byte_level_pre_tokenizer(meta.get("tokenizer.ggml.pre"))
        backend.decoder = decoders.ByteLevel()
        add_bos_default = False
    elif kind == "llama":
        scores = list(meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
        vocab = {t: i for i, t in enumerate(tokens)}
        merges_raw = meta.get("tokenizer.ggml.merges")
        if merges_raw is not None:
            merges = [tuple(m.split(" ", 1)) for m in merges_raw]
        else:
            merges = _merges_from_scores(tokens, scores, {i for i, t in enumerate(types) if t in (CONTROL, BYTE, UNKNOWN)})
        unk = special("unknown")
        backend = BackendTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True,
                                              fuse_unk=True))
        prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never",
                                                         split=False)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if prefix:
            steps.append(decoders.Strip(" ", 1, 0))
        backend.decoder = decoders.Sequence(steps)
        add_bos_default = True
    else:
        raise GGUFTokenizerError(f"tokenizer.ggml.model={kind!r} is not supported: llmkit builds 'gpt2' (byte-level "
                                 "BPE) and 'llama' (SentencePiece-style BPE) tokenizers")

    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in sorted(control)])
    user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == USER_DEFINED]
    if user:
        backend.add_tokens(user)
    bos, eos = special("bos"), special("eos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        single = " ".join(([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else []))
        pair = single + " " + " ".join(([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else []))
        used = {t: vocab.get(t, tokens.index(t)) for t in ((bos,) if add_bos else ()) + ((eos,) if add_eos else ())}
        backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(used.items()))
    names = {"bos_token": bos, "eos_token": eos, "unk_token": special("unknown"), "pad_token": special("padding")}
    named = set(v for v in names.values() if v is not None)
    extra = [tokens[i] for i in sorted(control) if tokens[i] not in named]
    return Tokenizer(backend, special_tokens=names, extra_special_tokens=extra,
                     chat_template=meta.get("tokenizer.chat_template"), model_max_length=context_length)


def gguf_tokenizer_metadata(tok: Tokenizer) -> dict[str, Any]:
    """The `tokenizer.ggml.*` keys (and the chat template) that describe `tok` to llama.cpp and
    to `tokenizer_from_gguf`. Byte-level BPE is written as ``gpt2`` with its merges; the
    pre-tokenizer's name is read off the pipeline, not guessed from a hash."""
    import json

    raw = json.loads(tok.backend.to_str())
    model = raw["model"]
    if model.get("type") != "BPE":
        raise GGUFTokenizerError(f"a {model.get('type')} tokenizer cannot be written to GGUF: llmkit exports BPE "
                                 "tokenizers (byte-level or SentencePiece-style)")
    size = tok.vocab_size
    tokens = [""] * size
    for t, i in model["vocab"].items():
        tokens[i] = t
    added = tok.backend.get_added_tokens_decoder()
    for i, t in added.items():
        tokens[i] = t.content
    missing = [i for i, t in enumerate(tokens) if t == ""]
    if missing:
        raise GGUFTokenizerError(f"the vocabulary has no token for id(s) {missing[:5]}: GGUF needs a dense vocabulary")
    types = [NORMAL] * size
    for i, t in added.items():
        types[i] = CONTROL if t.special else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = raw.get("pre_tokenizer") or {}
    out: dict[str, Any] = {}
    if _is_byte_level(pre):
        out["tokenizer.ggml.model"] = "gpt2"
        out["tokenizer.ggml.pre"] = _pre_name(pre)
    elif model.get("byte_fallback"):
        out["tokenizer.ggml.model"] = "llama"
        for i, t in enumerate(tokens):
            if types[i] == NORMAL and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = BYTE
        # scores: llama.cpp ranks SentencePiece merges by the merged token's score
        rank = {a + b: n for n, m in enumerate(merges) for a, b in [m.split(" ", 1)]}
        out["tokenizer.ggml.scores"] = [-float(rank.get(t, len(merges) + i)) if types[i] == NORMAL else 0.0
                                        for i, t in enumerate(tokens)]
        out["tokenizer.ggml.add_space_prefix"] = pre.get("prepend_scheme", "first") != "never"
    else:
        raise GGUFTokenizerError("this BPE tokenizer is neither byte-level nor SentencePiece-style (byte fallback): "
                                 "llama.cpp would tokenize it differently, so it is not exported")
    out["tokenizer.ggml.tokens"] = tokens
    out["tokenizer.ggml.token_type"] = types
    out["tokenizer.ggml.merges"] = merges
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"), ("padding", "pad_token")):
        token = tok.special_tokens.get(name)
        if token is not None and tok.token_to_id(token) is not None:
            out[f"tokenizer.ggml.{key}_token_id"] = tok.token_to_id(token)
    add_bos, add_eos = tok._adds()
    out["tokenizer.ggml.add_bos_token"] = add_bos
    out["tokenizer.ggml.add_eos_token"] = add_eos
    if tok.chat_template is not None:
        out["tokenizer.chat_template"] = tok.chat_template
    return out


def _is_byte_level(pre: Mapping[str, Any]) -> bool:
    if pre.get("type") == "ByteLevel":
        return True
    return pre.get("type") == "Sequence" and any(p.get("type") == "ByteLevel" for p in pre.get("pretokenizers", []))


def _pre_name(pre: Mapping[str, Any]) -> str:
    """llama.cpp's name for this byte-level pipeline; refuse one it has no name for."""
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    regexes = []
    for p in steps:
        if p.get("type") == "ByteLevel":
            if p.get("use_regex", True):
                regexes.append("gpt2")
        elif p.get("type") == "Split":
            regexes.append(p.get("pattern", {}).get("Regex"))
        elif p.get("type") == "Digits" and p.get("individual_digits"):
            regexes.append(_DIGITS)
        else:
            raise GGUFTokenizerError(f"pre-tokenizer step {p.get('type')} has no llama.cpp equivalent")
    for name in ("gpt-2", "smollm", "llama-bpe", "qwen2"):
        if tuple(regexes) == PRE_TOKENIZERS[name]:
            return name
    raise GGUFTokenizerError(f"this byte-level pre-tokenizer ({regexes}) matches none llama.cpp names "
                             f"({', '.join(sorted(PRE_TOKENIZERS))}): llama.cpp would split text differently")
