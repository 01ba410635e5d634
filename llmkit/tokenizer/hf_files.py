"""Reading a Hugging Face tokenizer directory the way `transformers` 5 does.

`tokenizer.json` is the pipeline, but `transformers.AutoTokenizer` does not always use it as is:

* for some tokenizer classes (`LlamaTokenizer`, `GPT2Tokenizer`, `Qwen2Tokenizer`, ...) it keeps only
  the vocabulary, merges and post-processor from `tokenizer.json` and rebuilds the normalizer,
  pre-tokenizer and decoder in Python. For Llama-2 / Mistral files this changes the encoding: the
  `Prepend("▁")` normalizer becomes a `Metaspace(prepend_scheme="first")` pre-tokenizer.
* `BertTokenizer` (and its aliases) keeps only the vocabulary and rebuilds everything else, the
  post-processor included, from `tokenizer_config.json`; without a `tokenizer.json` it reads
  `vocab.txt` (see `wordpiece`).
* `T5Tokenizer` keeps only the Unigram vocabulary and a SentencePiece `Precompiled` normalizer,
  rebuilds the rest, always appends `</s>`, and adds the `<extra_id_N>` sentinels (see `unigram`).
* the special tokens named in `tokenizer_config.json` (and the added tokens listed there) are added
  to the vocabulary when `tokenizer.json` lacks them.
* `add_bos_token` / `add_eos_token` in `tokenizer_config.json` are ignored when `tokenizer.json`
  exists: the post-processor in `tokenizer.json` alone decides whether bos/eos are added.

We mirror that here with the `tokenizers` library only, so `llmkit.Tokenizer` gives the same ids
as `AutoTokenizer` without importing transformers. The class tables below are a snapshot of
transformers 5.x (`models/auto/tokenization_auto.py`) for the families llmkit supports.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE

from llmkit.tokenizer import unigram, wordpiece

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"

# transformers' named special tokens, in its order (SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# Class names that mean "use tokenizer.json as is".
_GENERIC = {"TokenizersBackend", "PythonBackend", "PreTrainedTokenizer", "PreTrainedTokenizerFast",
            "MistralCommonBackend"}

# model_type -> (tokenizer class transformers registers for it, whether it overrides the hub's
# tokenizer_class: MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS). Types not listed register nothing.
_REGISTERED: dict[str, tuple[str, bool]] = {
    "gpt2": ("GPT2Tokenizer", False), "gpt_neo": ("GPT2Tokenizer", False), "gptj": ("GPT2Tokenizer", False),
    "opt": ("GPT2Tokenizer", False), "phi": ("GPT2Tokenizer", False), "starcoder2": ("GPT2Tokenizer", False),
    "codegen": ("GPT2Tokenizer", False),
    "qwen2": ("Qwen2Tokenizer", True), "qwen2_moe": ("Qwen2Tokenizer", False), "qwen3": ("Qwen2Tokenizer", False),
    "qwen3_moe": ("Qwen2Tokenizer", False),
    "mistral": ("TokenizersBackend", False), "mixtral": ("TokenizersBackend", False),
    "phi3": ("TokenizersBackend", True), "olmo2": ("TokenizersBackend", False),
    "gemma": ("GemmaTokenizer", False), "gemma2": ("GemmaTokenizer", False), "gemma3": ("GemmaTokenizer", False),
    "bert": ("BertTokenizer", False), "distilbert": ("BertTokenizer", False), "electra": ("BertTokenizer", False),
    "t5": ("T5Tokenizer", False), "mt5": ("T5Tokenizer", False), "switch_transformers": ("T5Tokenizer", False),
    "gpt_neox": ("GPTNeoXTokenizer", False),
    "olmo": ("GPTNeoXTokenizer", False),
}

# Special-token defaults of the classes we emulate (used when tokenizer_config.json omits the key).
_CLASS_DEFAULTS: dict[str, dict[str, str | None]] = {
    "LlamaTokenizer": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
    "GPT2Tokenizer": {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
    "Qwen2Tokenizer": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    **{name: wordpiece.BERT_SPECIAL_TOKENS for name in wordpiece.WORDPIECE_CLASSES},
    **{name: unigram.T5_SPECIAL_TOKENS for name in unigram.T5_CLASSES},
}

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass
class HFFiles:
    """The parsed contents of a tokenizer directory."""

    path: Path
    tokenizer_json: str  # "" when the directory has only a vocab.txt (BERT's slow-tokenizer file)
    config: dict[str, Any] = field(default_factory=dict)       # tokenizer_config.json
    special_map: dict[str, Any] = field(default_factory=dict)  # special_tokens_map.json (legacy)
    model_config: dict[str, Any] = field(default_factory=dict)  # config.json, if the dir holds a model
    chat_templates: dict[str, str] = field(default_factory=dict)
    vocab_txt: Path | None = None  # read only when tokenizer.json is absent


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or delete the file") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def read_hf_files(path: str | Path) -> HFFiles:
    """Read tokenizer.json (or, for BERT-style tokenizers, vocab.txt) and the optional config and
    chat-template files in `path`."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(path)!r} does not exist (or is not a directory)")
    tok_file, vocab_txt = path / TOKENIZER_FILE, path / wordpiece.VOCAB_FILE
    has_json = tok_file.is_file()
    if not has_json and not vocab_txt.is_file():
        raise FileNotFoundError(_no_tokenizer_message(path))
    files = HFFiles(path=path, tokenizer_json=tok_file.read_text(encoding="utf-8") if has_json else "",
                    config=_read_json(path / TOKENIZER_CONFIG_FILE),
                    special_map=_read_json(path / SPECIAL_TOKENS_MAP_FILE),
                    model_config=_read_json(path / "config.json"),
                    vocab_txt=None if has_json else vocab_txt)
    if not has_json and transformers_class(files) not in wordpiece.WORDPIECE_CLASSES:
        found = files.config.get("tokenizer_class") or files.model_config.get("model_type")
        raise FileNotFoundError(
            f"{str(path)!r} has a {wordpiece.VOCAB_FILE} but no {TOKENIZER_FILE}, and its {TOKENIZER_CONFIG_FILE} / "
            f"config.json do not say it is a BERT WordPiece vocabulary (tokenizer_class or model_type: "
            f"{found or 'none'}). llmkit builds a tokenizer from {wordpiece.VOCAB_FILE} alone only for "
            f"{' / '.join(wordpiece.WORDPIECE_CLASSES)}: add {{\"tokenizer_class\": \"BertTokenizer\"}} to "
            f"{TOKENIZER_CONFIG_FILE} if it is one, or write {TOKENIZER_FILE} with transformers' save_pretrained.")
    files.chat_templates = _read_chat_templates(path, files.config)
    return files


def _no_tokenizer_message(path: Path) -> str:
    present = sorted(p.name for p in path.iterdir())[:20]
    hint = ""
    if any(n in present for n in ("tokenizer.model", "spiece.model", "vocab.json", "merges.txt")):
        hint = (" It holds slow-tokenizer files; convert them once with transformers: "
                "`AutoTokenizer.from_pretrained(dir).save_pretrained(dir)` writes tokenizer.json.")
    return (f"no {TOKENIZER_FILE} or {wordpiece.VOCAB_FILE} in tokenizer directory {str(path)!r} "
            f"(found: {', '.join(present) or 'nothing'}). llmkit reads the fast-tokenizer file {TOKENIZER_FILE} "
            f"(any family), or a BERT WordPiece {wordpiece.VOCAB_FILE} with its {TOKENIZER_CONFIG_FILE}: point at "
            f"the directory that has one, or write one with Tokenizer.train(...).save(dir).{hint}")


def _read_chat_templates(path: Path, config: dict[str, Any]) -> dict[str, str]:
    """Template files win over tokenizer_config.json["chat_template"], as in transformers."""
    templates: dict[str, str] = {}
    if (path / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (path / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if (path / CHAT_TEMPLATE_DIR).is_dir():
        for f in sorted((path / CHAT_TEMPLATE_DIR).glob("*.jinja")):
            templates[f.name.removesuffix(".jinja")] = f.read_text(encoding="utf-8")
    if templates:
        return templates
    entry = config.get("chat_template")
    if isinstance(entry, str):
        return {"default": entry}
    if isinstance(entry, list):
        for item in entry:
            if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                    and isinstance(item.get("template"), str)):
                raise ValueError(f"{path / TOKENIZER_CONFIG_FILE}: chat_template list entries must be "
                                 f"{{'name': str, 'template': str}}, found {item!r}")
            templates[item["name"]] = item["template"]
    elif entry is not None:
        raise ValueError(f"{path / TOKENIZER_CONFIG_FILE}: chat_template must be a string or a list of "
                         f"{{name, template}}, found {type(entry).__name__}")
    return templates


def transformers_class(files: HFFiles) -> str:
    """The tokenizer class `AutoTokenizer.from_pretrained` picks for these files (condensed)."""
    hub = files.config.get("tokenizer_class") or files.model_config.get("tokenizer_class")
    hub = hub.removesuffix("Fast") if isinstance(hub, str) else None
    registered, overrides_hub = _REGISTERED.get(files.model_config.get("model_type") or "", (None, False))
    if hub == "LlamaTokenizer" and not overrides_hub and '"ByteLevel"' in files.tokenizer_json:
        return "TokenizersBackend"  # transformers: a byte-level tokenizer.json is never a Llama(SPM) one
    if hub and registered and registered != hub:
        name = registered if overrides_hub else hub
        return "TokenizersBackend" if registered in _GENERIC or name in _GENERIC else name
    name = hub or registered or "TokenizersBackend"
    return "TokenizersBackend" if name in _GENERIC else name


def _added_token(value: Any, default_special: bool = True) -> AddedToken:
    """An AddedToken from a config value: a string, or a serialized {"content": ..., ...} dict."""
    if isinstance(value, AddedToken):
        return value
    if isinstance(value, dict):
        fields = {k: value[k] for k in ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
                  if k in value}
        return AddedToken(**fields)
    return AddedToken(str(value), special=default_special)


def _token_key(t: AddedToken) -> tuple:
    return (t.content, t.single_word, t.lstrip, t.rstrip, t.normalized, t.special)


def _rebuild(cls_name: str, raw: dict[str, Any], config: dict[str, Any]) -> BackendTokenizer | None:
    """The backend transformers builds in `cls_name.__init__` from tokenizer.json's vocab/merges."""
    model = raw.get("model") or {}
    if model.get("type") != "BPE":
        logger.debug("%s with a %s model: using tokenizer.json as is", cls_name, model.get("type"))
        return None
    vocab = model["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    if cls_name == "LlamaTokenizer":
        add_prefix_space = config.get("add_prefix_space")
        add_prefix_space = True if add_prefix_space is None else add_prefix_space
        scheme = ("first" if not config.get("legacy", False) else "always") if add_prefix_space else "never"
        tok = BackendTokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_prefix_space:
            steps.append(decoders.Strip(content=" ", left=1))
        tok.decoder = decoders.Sequence(steps)
    elif cls_name == "GPT2Tokenizer":
        tok = BackendTokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
        tok.decoder = decoders.ByteLevel()
    else:  # Qwen2Tokenizer
        tok = BackendTokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                                   continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                   byte_fallback=False))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space") or False), use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
    if raw.get("post_processor") is not None:
        tok.post_processor = BackendTokenizer.from_str(json.dumps(_minimal(raw))).post_processor
    return tok


def _minimal(raw: dict[str, Any]) -> dict[str, Any]:
    """tokenizer.json with an empty vocabulary, to parse its post-processor cheaply."""
    small = dict(raw, added_tokens=[], normalizer=None, pre_tokenizer=None, decoder=None)
    small["model"] = {"type": "BPE", "vocab": {}, "merges": []}
    return small


@dataclass
class LoadedTokenizer:
    backend: BackendTokenizer
    special_tokens: dict[str, str]   # named special tokens (bos_token, ..., model-specific *_token)
    extra_special_tokens: list[str]
    class_name: str


def load_backend(files: HFFiles) -> LoadedTokenizer:
    """Build the backend tokenizer and the special-token map exactly as transformers 5 would."""
    cls_name = transformers_class(files)
    config = dict(files.config)
    legacy = "added_tokens_decoder" not in config
    if legacy:  # no added-token list in the config: special_tokens_map.json's values win over the config's
        for key, value in files.special_map.items():
            if isinstance(value, dict) and key != "extra_special_tokens":
                value = {**value, "special": True}
            config[key] = value

    backend, raw = None, None
    if cls_name in _CLASS_DEFAULTS and files.tokenizer_json:  # parse the JSON in Python only when we must rebuild
        raw = json.loads(files.tokenizer_json)
    if cls_name in wordpiece.WORDPIECE_CLASSES:
        unk = config.get("unk_token", _CLASS_DEFAULTS[cls_name]["unk_token"])
        vocab = (wordpiece.vocab_from_json(raw.get("model") or {}) if raw is not None
                 else wordpiece.read_vocab_txt(files.vocab_txt))
        backend = wordpiece.build_bert(vocab, unk_token=_added_token(unk).content if unk else str(unk),
                                       **wordpiece.bert_options(config))
    elif cls_name in unigram.T5_CLASSES and raw is not None:
        backend = unigram.build_t5_from_json(raw)
        if backend is None:
            logger.debug("T5Tokenizer with a non-Unigram tokenizer.json: using it as is")
    elif raw is not None:
        backend = _rebuild(cls_name, raw, files.config)
    elif cls_name != "TokenizersBackend":
        logger.debug("transformers rebuilds %s tokenizers in Python; llmkit uses tokenizer.json as is", cls_name)
    rebuilt = backend is not None
    if backend is None:
        backend = BackendTokenizer.from_str(files.tokenizer_json)
        json_added = backend.get_added_tokens_decoder()
    else:
        json_added = {int(t["id"]): _added_token(t) for t in (raw or {}).get("added_tokens", [])}
    backend.no_truncation()  # transformers turns both off unless a call asks for them
    backend.no_padding()

    # Added tokens: the config's list, else (legacy) tokenizer.json's list.
    if legacy:
        listed = dict(json_added)
    else:
        listed = {int(i): _added_token(t) for i, t in config["added_tokens_decoder"].items()}
    by_content = {t.content: t for t in listed.values()}

    named: dict[str, AddedToken] = {}
    defaults = _CLASS_DEFAULTS.get(cls_name, {})
    keys = list(SPECIAL_TOKEN_ATTRS) + [k for k in config if k.endswith("_token") and k not in SPECIAL_TOKEN_ATTRS]
    for key in keys:
        value = config[key] if key in config else defaults.get(key)
        if isinstance(value, (str, dict)) and value != {}:
            tok = _added_token(value)
            named[key] = by_content.get(tok.content, tok)
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if cls_name in unigram.T5_CLASSES:  # T5Tokenizer adds its <extra_id_N> sentinels unless the config lists tokens
        extra = unigram.t5_extra_tokens(files.config, files.special_map, legacy)
    if isinstance(extra, dict):  # {name: token}: model-specific named tokens, e.g. image_token
        named.update({k: by_content.get(_added_token(v).content, _added_token(v)) for k, v in extra.items()})
        extra = []
    extra_tokens = [_added_token(t) for t in extra]

    # transformers' TokenizersBackend.__init__: add what the backend lacks, in one call, in this order.
    present = {_token_key(t) for t in backend.get_added_tokens_decoder().values()}
    to_add = [t for _, t in sorted(listed.items()) if _token_key(t) not in present]
    contents = {t.content for t in backend.get_added_tokens_decoder().values()} | {t.content for t in to_add}
    for tok in list(named.values()) + extra_tokens:
        if tok.content not in contents:
            if not tok.special and tok.content in {n.content for n in named.values()}:
                tok = AddedToken(tok.content, single_word=tok.single_word, lstrip=tok.lstrip, rstrip=tok.rstrip,
                                 normalized=tok.normalized, special=True)
            to_add.append(tok)
            contents.add(tok.content)
    if to_add:
        backend.add_tokens(to_add)
    specials_str = {k: v.content for k, v in named.items()}
    extra_str = [t.content for t in extra_tokens]
    if cls_name == "Qwen2Tokenizer":  # re-adds every special token with default flags
        backend.add_tokens([AddedToken(t, special=True) for t in dict.fromkeys([*specials_str.values(), *extra_str])])
    if cls_name in wordpiece.WORDPIECE_CLASSES:  # set last, from the tokens now in the vocabulary
        backend.post_processor = wordpiece.bert_post_processor(backend, specials_str.get("cls_token"),
                                                               specials_str.get("sep_token"))
    if cls_name in unigram.T5_CLASSES and rebuilt:  # T5Tokenizer sets "$A </s>" last, whatever tokenizer.json says
        backend.post_processor = unigram.t5_post_processor(backend.token_to_id(specials_str.get("eos_token") or ""))
    backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
    if rebuilt:
        logger.debug("%s: rebuilt the %s pipeline as transformers does", files.path, cls_name)
    return LoadedTokenizer(backend, specials_str, extra_str, cls_name)
