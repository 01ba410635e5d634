"""`Tokenizer`: a thin layer over `tokenizers.Tokenizer` that reads and writes Hugging Face
tokenizer directories and behaves like `transformers.AutoTokenizer` on them (same ids, same
decoded text, same chat-template strings) without importing transformers."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from llmkit.tokenizer import hf_files, unigram, wordpiece
from llmkit.utils import write_text_atomic
from llmkit.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from llmkit.tokenizer.stream import StreamDecoder, clean_up_tokenization
from llmkit.tokenizer.train import ENDOFTEXT, train_byte_level_bpe, train_t5_unigram, train_wordpiece

logger = logging.getLogger(__name__)

# Tokens that end a turn or a document in the families we know; `eos_token_ids` stops on any of
# them that the vocabulary holds as a special (added) token.
END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>",
               "<end_of_turn>", "<|end|>", "<|return|>")

_LARGE = int(1e20)  # transformers' "no limit" model_max_length is 1e30
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # SentencePiece byte-fallback pieces


def _to_id_list(ids: Any) -> list[int]:
    if isinstance(ids, int):
        return [ids]
    if hasattr(ids, "tolist"):  # numpy arrays, torch tensors
        ids = ids.tolist()
        if isinstance(ids, int):
            return [ids]
    return [int(i) for i in ids]


class Tokenizer:
    """A tokenizer that encodes, decodes and renders chats exactly like `transformers` 5 does for
    the same Hugging Face files.

    Load one with `Tokenizer.from_dir(path)`, or train one with `Tokenizer.train(texts)`.
    `backend` is the underlying `tokenizers.Tokenizer`.
    """

    def __init__(self, backend: BackendTokenizer, *, special_tokens: Mapping[str, str | None] | None = None,
                 extra_special_tokens: Sequence[str] = (), chat_template: str | Mapping[str, str] | None = None,
                 model_max_length: int | None = None, clean_up_tokenization_spaces: bool = False,
                 clean_up_for_bpe: bool = False, split_special_tokens: bool = False) -> None:
        self.backend = backend
        self.special_tokens: dict[str, str] = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.extra_special_tokens = list(extra_special_tokens)
        if isinstance(chat_template, Mapping):
            self.chat_templates = dict(chat_template)
        else:
            self.chat_templates = {"default": chat_template} if chat_template is not None else {}
        self.model_max_length = model_max_length if model_max_length is None or model_max_length < _LARGE else None
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.split_special_tokens = split_special_tokens
        backend.encode_special_tokens = split_special_tokens
        # transformers 5 ignores clean_up_tokenization_spaces=True for BPE models (it would corrupt the
        # text) unless the long-named override flag is set.
        is_bpe = type(backend.model).__name__ == "BPE"
        self._clean_up = clean_up_tokenization_spaces and (clean_up_for_bpe or not is_bpe)
        self._clean_up_for_bpe = clean_up_for_bpe

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a Hugging Face tokenizer directory: tokenizer.json (or, for BERT-style WordPiece
        tokenizers, vocab.txt), tokenizer_config.json, special_tokens_map.json, chat_template.jinja."""
        files = hf_files.read_hf_files(path)
        loaded = hf_files.load_backend(files)
        cfg = files.config
        max_len = cfg.get("model_max_length", cfg.get("max_len"))
        templates = files.chat_templates
        return cls(loaded.backend, special_tokens=loaded.special_tokens,
                   extra_special_tokens=loaded.extra_special_tokens,
                   chat_template=templates if set(templates) - {"default"} else templates.get("default"),
                   model_max_length=int(max_len) if isinstance(max_len, (int, float)) else None,
                   clean_up_tokenization_spaces=bool(cfg.get("clean_up_tokenization_spaces", False)),
                   clean_up_for_bpe=bool(cfg.get(
                       "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)),
                   split_special_tokens=bool(cfg.get("split_special_tokens", False)))

    @classmethod
    def train(cls, texts_or_files: Iterable[str] | Iterable[str | os.PathLike] | str | os.PathLike,
              vocab_size: int = 4096, special_tokens: list[str] | None = None, min_frequency: int = 2,
              chat_template: str | None = None, model_max_length: int | None = None,
              kind: str = "bpe") -> Tokenizer:
        """Train a tokenizer on an iterable of strings or a list of file paths.

        ``kind="bpe"`` (default): a byte-level BPE (GPT-2 style, all 256 bytes in the alphabet, so
        any text round-trips). Special tokens default to `<|endoftext|>` (eos, bos and pad; no bos
        is added when encoding) and ChatML's `<|im_start|>` / `<|im_end|>`; the chat template
        defaults to ChatML.

        ``kind="wordpiece"``: a BERT-style uncased WordPiece for masked-LM encoders, with
        [PAD] [UNK] [CLS] [SEP] [MASK] as ids 0-4 (`special_tokens` may add more after them),
        "[CLS] text [SEP]" when encoding, and no chat template unless one is given. It saves as a
        `BertTokenizer` that transformers loads with the same encodings.

        ``kind="unigram"``: a T5-style SentencePiece Unigram for encoder-decoders, with <pad> </s>
        <unk> as ids 0-2 (`special_tokens` may add more after them), the 100 span-corruption
        sentinels `<extra_id_0>`... as the last ids (`sentinel_ids`), "text </s>" when encoding
        and no chat template unless one is given. `vocab_size` counts the sentinels;
        `min_frequency` does not apply. It saves as a `T5Tokenizer` that transformers loads with
        the same encodings.
        """
        if kind == "wordpiece":
            backend, extra = train_wordpiece(texts_or_files, vocab_size, special_tokens, min_frequency)
            return cls(backend, special_tokens=wordpiece.BERT_SPECIAL_TOKENS, extra_special_tokens=extra,
                       chat_template=chat_template, model_max_length=model_max_length)
        if kind == "unigram":
            backend, extra = train_t5_unigram(texts_or_files, vocab_size, special_tokens)
            return cls(backend, special_tokens=unigram.T5_SPECIAL_TOKENS, extra_special_tokens=extra,
                       chat_template=chat_template, model_max_length=model_max_length)
        if kind != "bpe":
            raise ValueError(f"kind={kind!r} is not a tokenizer llmkit trains: use 'bpe' (byte-level BPE, for "
                             f"decoders), 'wordpiece' (BERT-style, for masked-LM encoders) or 'unigram' "
                             f"(T5-style, for encoder-decoders)")
        backend = train_byte_level_bpe(texts_or_files, vocab_size, special_tokens, min_frequency)
        names = [t.content for _, t in sorted(backend.get_added_tokens_decoder().items())]
        eos = ENDOFTEXT if ENDOFTEXT in names else (names[0] if names else None)
        return cls(backend, special_tokens={"bos_token": eos, "eos_token": eos, "pad_token": eos},
                   extra_special_tokens=[n for n in names if n != eos],
                   chat_template=DEFAULT_CHAT_TEMPLATE if chat_template is None else chat_template,
                   model_max_length=model_max_length)

    # ------------------------------------------------------------------ special tokens
    @property
    def vocab_size(self) -> int:
        """Size of the full vocabulary, added tokens included (transformers' `len(tokenizer)`)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    bos_token = property(lambda self: self.special_tokens.get("bos_token"), doc="Beginning-of-sequence token.")
    eos_token = property(lambda self: self.special_tokens.get("eos_token"), doc="End-of-sequence token.")
    pad_token = property(lambda self: self.special_tokens.get("pad_token"), doc="Padding token.")
    unk_token = property(lambda self: self.special_tokens.get("unk_token"), doc="Unknown token.")
    cls_token = property(lambda self: self.special_tokens.get("cls_token"), doc="Classifier token (BERT's [CLS]).")
    sep_token = property(lambda self: self.special_tokens.get("sep_token"), doc="Separator token (BERT's [SEP]).")
    mask_token = property(lambda self: self.special_tokens.get("mask_token"),
                          doc="Mask token of masked-LM pretraining (BERT's [MASK]).")

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def padding_id(self) -> int:
        """The id that fills padded positions: the pad token's, else eos's (a masked position's
        value never matters, but it must be a real id), else 0."""
        for i in (self.pad_token_id, self.eos_token_id):
            if i is not None:
                return i
        return 0

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    @property
    def cls_token_id(self) -> int | None:
        return self._id(self.cls_token)

    @property
    def sep_token_id(self) -> int | None:
        return self._id(self.sep_token)

    @property
    def mask_token_id(self) -> int | None:
        return self._id(self.mask_token)

    @property
    def eos_token_ids(self) -> set[int]:
        """Ids that end generation: eos plus the end-of-turn markers this vocabulary has."""
        ids = {self.eos_token_id} if self.eos_token_id is not None else set()
        added = {t.content: i for i, t in self.backend.get_added_tokens_decoder().items()}
        return ids | {added[m] for m in END_MARKERS if m in added}

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the added tokens marked special (what `skip_special_tokens` drops)."""
        return sorted(i for i, t in self.backend.get_added_tokens_decoder().items() if t.special)

    @property
    def sentinel_ids(self) -> list[int]:
        """Ids of the span-corruption sentinels `<extra_id_0>`, `<extra_id_1>`, ... in that order, as
        far as the vocabulary has them without a gap (T5: 100, counting down from the last id);
        empty when it has none."""
        ids: list[int] = []
        while (i := self.backend.token_to_id(unigram.sentinel_token(len(ids)))) is not None:
            ids.append(i)
        return ids

    @property
    def chat_template(self) -> str | None:
        """The default chat template (Jinja2 source), or None."""
        return self.chat_templates.get("default")

    @chat_template.setter
    def chat_template(self, template: str | None) -> None:
        if template is None:
            self.chat_templates.pop("default", None)
        else:
            self.chat_templates["default"] = template

    def token_to_id(self, tok: str) -> int | None:
        """Id of token string `tok`, or None if it is not in the vocabulary."""
        return self.backend.token_to_id(tok)

    def id_to_token(self, i: int) -> str | None:
        """Token string of id `i`, or None if out of range."""
        return self.backend.id_to_token(int(i))

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens` the post-processor adds bos/eos when the
        tokenizer files say so (e.g. Llama), exactly as `AutoTokenizer(text)["input_ids"]`."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}; use encode_batch for a list")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Encode many texts at once (in parallel in the Rust backend)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_batch() takes a list of str")
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def encode_pair(self, a: str, b: str, add_special_tokens: bool = True) -> tuple[list[int], list[int]]:
        """(ids, token_type_ids) of a sentence pair, as `AutoTokenizer(a, b)` gives "input_ids" and
        "token_type_ids" (for BERT: "[CLS] a [SEP] b [SEP]", types 0 up to the first [SEP], then 1)."""
        if not isinstance(a, str) or not isinstance(b, str):
            raise TypeError(f"encode_pair() takes two str, got {type(a).__name__} and {type(b).__name__}")
        encoding = self.backend.encode(a, b, add_special_tokens=add_special_tokens)
        return encoding.ids, encoding.type_ids

    def decode(self, ids: Sequence[int] | Any, skip_special_tokens: bool = False) -> str:
        """Text of token ids, identical to transformers' `decode` (including its
        clean_up_tokenization_spaces rule)."""
        text = self.backend.decode(_to_id_list(ids), skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self._clean_up else text

    def stream_decoder(self, skip_special_tokens: bool = True) -> StreamDecoder:
        """A `StreamDecoder` that turns generated ids into text deltas, never splitting a character."""
        byte_ids, special_ids = self._stream_ids()
        return StreamDecoder(lambda ids: self.backend.decode(ids, skip_special_tokens=skip_special_tokens),
                             clean_up=self._clean_up, byte_ids=byte_ids,
                             skipped_ids=special_ids if skip_special_tokens else ())

    def _stream_ids(self) -> tuple[frozenset[int], frozenset[int]]:
        """(byte-fallback piece ids if the decoder uses ByteFallback, special ids), cached per vocab size."""
        decoder = self.backend.decoder
        key = (self.vocab_size, decoder.__getstate__() if decoder is not None else None)
        if getattr(self, "_stream_cache", (None,))[0] != key:
            byte_ids: frozenset[int] = frozenset()
            if key[1] is not None and b'"ByteFallback"' in key[1]:
                byte_ids = frozenset(i for t, i in self.backend.get_vocab().items() if _BYTE_PIECE.fullmatch(t))
            self._stream_cache = (key, byte_ids, frozenset(self.all_special_ids))
        return self._stream_cache[1], self._stream_cache[2]

    # ------------------------------------------------------------------ chat
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False, tokenize: bool = False,
                            tools: list[dict] | None = None, **kwargs: Any) -> str | list[int]:
        """Render `messages` ([{"role": ..., "content": ...}, ...]) with the chat template, as
        transformers' `apply_chat_template` does. `tokenize=True` returns ids, encoded without
        adding special tokens (the template writes them). Extra keyword arguments become template
        variables; `chat_template=` overrides the template (a name or Jinja source)."""
        template = self._pick_template(kwargs.pop("chat_template", None), tools)
        text = render_chat(template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                           special_tokens=self.special_tokens, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _pick_template(self, chat_template: str | None, tools: list[dict] | None) -> str:
        if chat_template is not None:
            return self.chat_templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in self.chat_templates:
            return self.chat_templates["tool_use"]
        if "default" in self.chat_templates:
            return self.chat_templates["default"]
        if self.chat_templates:
            raise ValueError(f"this tokenizer has several chat templates and no default: pass "
                             f"chat_template= one of {sorted(self.chat_templates)}")
        raise ValueError("this tokenizer has no chat template: set tokenizer.chat_template (Jinja2 source, "
                         "e.g. llmkit.tokenizer.DEFAULT_CHAT_TEMPLATE) or pass chat_template=")

    # ------------------------------------------------------------------ save
    def _adds(self) -> tuple[bool, bool]:
        """Whether the post-processor adds bos / eos to a single sequence."""
        ids = self.backend.encode("", add_special_tokens=True).ids
        bos, eos = self.bos_token_id, self.eos_token_id
        add_bos = bool(ids) and bos is not None and ids[0] == bos
        add_eos = bool(ids) and eos is not None and ids[-1] == eos and (len(ids) > 1 or not add_bos)
        return add_bos, add_eos

    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and the chat
        template(s) so that `transformers.AutoTokenizer.from_pretrained(path)` behaves the same."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        add_bos, add_eos = self._adds()
        # A BERT pipeline is saved as BertTokenizer (transformers then returns token_type_ids) only
        # when that class rebuilds exactly this backend; anything else says "use tokenizer.json as is".
        # Likewise a T5 pipeline as T5Tokenizer (which rebuilds it and appends "</s>").
        bert = wordpiece.bert_config(self.backend, self.special_tokens)
        t5 = None if bert else unigram.t5_config(self.backend, self.special_tokens, self.extra_special_tokens)
        cls_name = "BertTokenizer" if bert else "T5Tokenizer" if t5 else "PreTrainedTokenizerFast"
        config: dict[str, Any] = {"tokenizer_class": cls_name, **(bert or t5 or {})}
        named = hf_files.SPECIAL_TOKEN_ATTRS if bert else ("bos_token", "eos_token", "unk_token", "pad_token")
        for key in named:  # null is explicit: no class default
            config[key] = self.special_tokens.get(key)
        config.update(self.special_tokens)
        if self.extra_special_tokens:
            config["additional_special_tokens"] = list(self.extra_special_tokens)
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        config.update(add_bos_token=add_bos, add_eos_token=add_eos,
                      clean_up_tokenization_spaces=self.clean_up_tokenization_spaces)
        if self._clean_up_for_bpe:
            config["clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"] = True
        if self.split_special_tokens:
            config["split_special_tokens"] = True
        if self.chat_templates:  # also in the config, for transformers < 4.51 which reads only this
            named = self.chat_templates
            config["chat_template"] = (named["default"] if set(named) == {"default"}
                                       else [{"name": k, "template": v} for k, v in named.items()])
        config["added_tokens_decoder"] = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                                                   "rstrip": t.rstrip, "single_word": t.single_word,
                                                   "special": t.special}
                                          for i, t in sorted(self.backend.get_added_tokens_decoder().items())}
        special_map = dict(self.special_tokens)
        if self.extra_special_tokens:
            special_map["additional_special_tokens"] = list(self.extra_special_tokens)

        write_text_atomic(path / hf_files.TOKENIZER_FILE, self.backend.to_str(pretty=True))
        write_text_atomic(path / hf_files.TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        write_text_atomic(path / hf_files.SPECIAL_TOKENS_MAP_FILE,
                      json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")
        self._save_templates(path)
        self._check_reload(path)

    def _save_templates(self, path: Path) -> None:
        main, extra_dir = path / hf_files.CHAT_TEMPLATE_FILE, path / hf_files.CHAT_TEMPLATE_DIR
        if self.chat_template is not None:
            write_text_atomic(main, self.chat_template)
        else:  # a stale file would win over what we just wrote into the config
            main.unlink(missing_ok=True)
        for name, template in self.chat_templates.items():
            if name != "default":
                if "/" in name or "\\" in name or name.startswith("."):
                    raise ValueError(f"invalid chat template name {name!r}")
                write_text_atomic(extra_dir / f"{name}.jinja", template)
        if extra_dir.is_dir():
            for stale in extra_dir.glob("*.jinja"):
                if stale.name.removesuffix(".jinja") not in self.chat_templates:
                    stale.unlink()

    def _check_reload(self, path: Path) -> None:
        """Warn when transformers would rebuild this pipeline differently (e.g. a config.json with
        model_type "qwen2" next to it makes AutoTokenizer use Qwen2Tokenizer's own pre-tokenizer)."""
        files = hf_files.read_hf_files(path)
        cls_name = hf_files.transformers_class(files)
        if cls_name == "TokenizersBackend":
            return
        reloaded = hf_files.load_backend(files).backend
        mine, theirs = json.loads(self.backend.to_str()), json.loads(reloaded.to_str())
        keys = ("normalizer", "pre_tokenizer", "decoder")
        if any(mine[k] != theirs[k] for k in keys):
            logger.warning("%s: transformers will load this tokenizer as %s (from config.json's model_type "
                           "or tokenizer_class) and rebuild its normalizer/pre-tokenizer/decoder, so "
                           "AutoTokenizer may encode differently from llmkit", path, cls_name)
