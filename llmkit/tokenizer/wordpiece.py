"""BERT-style WordPiece pipelines, built the way transformers 5's `BertTokenizer` builds them.

transformers never uses a BERT tokenizer.json as is: `BertTokenizer.__init__` keeps only the
vocabulary (from tokenizer.json, else vocab.txt) and rebuilds the rest from tokenizer_config.json:

* normalizer: `BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
  strip_accents=strip_accents, lowercase=do_lower_case)` - `do_lower_case` defaults to True, so
  a tokenizer.json that does not lowercase still lowercases when the config omits the key;
* pre-tokenizer `BertPreTokenizer`, decoder `WordPiece(prefix="##")`;
* model `WordPiece(vocab, unk_token)` with the library defaults ("##", 100 characters a word),
  whatever tokenizer.json says;
* post-processor "[CLS] $A [SEP]" / "[CLS] $A [SEP] $B:1 [SEP]:1" from the cls/sep tokens,
  set after the special tokens are added (it replaces tokenizer.json's).

Loading (`hf_files`), training (`train`) and saving (`Tokenizer.save`) all go through `build_bert`,
so a tokenizer llmkit trains is, by construction, the one transformers rebuilds from its files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

VOCAB_FILE = "vocab.txt"

# Hub class names transformers 5 builds with BertTokenizer.__init__ (DistilBertTokenizer only
# changes model_input_names; ElectraTokenizer resolves to BertTokenizer itself), and their
# special-token defaults.
WORDPIECE_CLASSES = ("BertTokenizer", "DistilBertTokenizer", "ElectraTokenizer")
BERT_SPECIAL_TOKENS: dict[str, str] = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                                       "sep_token": "[SEP]", "mask_token": "[MASK]"}


def bert_options(config: dict[str, Any]) -> dict[str, Any]:
    """BertTokenizer's pipeline options from tokenizer_config.json, with the class defaults."""
    return {"do_lower_case": bool(config.get("do_lower_case", True)),
            "strip_accents": config.get("strip_accents"),
            "tokenize_chinese_chars": bool(config.get("tokenize_chinese_chars", True))}


def read_vocab_txt(path: str | Path) -> dict[str, int]:
    """vocab.txt (one token a line, id = line number) read by the same Rust reader transformers
    ends up calling (it hands the path to `WordPiece`), so odd lines are treated the same."""
    return models.WordPiece.read_file(str(path))


def vocab_from_json(model: dict[str, Any]) -> dict[str, int]:
    """tokenizer.json's model vocabulary as a dict, as transformers extracts it for a WordPiece class."""
    vocab = model.get("vocab") or {}
    if isinstance(vocab, list):  # Unigram-style [[token, score], ...]: ids are positions
        vocab = {t[0] if isinstance(t, list) else t: i for i, t in enumerate(vocab)}
    return vocab


def build_bert(vocab: dict[str, int], unk_token: str = "[UNK]", do_lower_case: bool = True,
               strip_accents: bool | None = None, tokenize_chinese_chars: bool = True) -> BackendTokenizer:
    """BertTokenizer's backend without its post-processor (see `bert_post_processor`)."""
    tok = BackendTokenizer(models.WordPiece(vocab, unk_token=str(unk_token)))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
                                                strip_accents=strip_accents, lowercase=do_lower_case)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def bert_post_processor(backend: BackendTokenizer, cls_token: str | None,
                        sep_token: str | None) -> processors.TemplateProcessing:
    """"[CLS] $A [SEP]" and "[CLS] $A [SEP] $B:1 [SEP]:1", as BertTokenizer sets it. transformers
    writes str(None) and ids 2/3 when a token is missing; we do the same rather than guess."""
    cls, sep = str(cls_token), str(sep_token)
    cls_id, sep_id = backend.token_to_id(cls), backend.token_to_id(sep)
    return processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, 2 if cls_id is None else cls_id), (sep, 3 if sep_id is None else sep_id)])


def bert_config(backend: BackendTokenizer, special_tokens: dict[str, str]) -> dict[str, Any] | None:
    """The tokenizer_config.json entries (do_lower_case, strip_accents, tokenize_chinese_chars)
    with which transformers' BertTokenizer rebuilds exactly `backend`, or None when it would
    build something else (then the files must say "use tokenizer.json as is")."""
    model, norm = backend.model, backend.normalizer
    if not (isinstance(model, models.WordPiece) and isinstance(norm, normalizers.BertNormalizer)
            and isinstance(backend.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
            and isinstance(backend.decoder, decoders.WordPiece)):
        return None
    same = (norm.clean_text and model.continuing_subword_prefix == "##" and model.max_input_chars_per_word == 100
            and model.unk_token == special_tokens.get("unk_token") and backend.decoder.prefix == "##"
            and backend.decoder.cleanup)
    expected = bert_post_processor(backend, special_tokens.get("cls_token"), special_tokens.get("sep_token"))
    post = backend.post_processor
    if not same or post is None or post.__getstate__() != expected.__getstate__():
        return None
    return {"do_lower_case": norm.lowercase, "strip_accents": norm.strip_accents,
            "tokenize_chinese_chars": norm.handle_chinese_chars}
