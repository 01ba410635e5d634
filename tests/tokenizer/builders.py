"""Builders for small Hugging Face tokenizer directories, one per family style.

Each builder trains a tiny vocabulary with the `tokenizers` library on a fixed corpus (Python
stdlib sources plus a few lines of multilingual text) and writes it in HF layout *with
transformers*, so the files are exactly what real checkpoints look like. Other rooms' tests can
use them to get a GPT-2, Llama-3 or Llama-2/Mistral style tokenizer without network access:

    from tests.tokenizer.builders import build_llama3_style
    path = build_llama3_style(tmp_path / "tok")
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import textwrap
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The Llama-3 instruct template, as published with Meta-Llama-3-8B-Instruct.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# A Mistral-instruct style template: strict user/assistant alternation, system folded into the
# first user turn, raise_exception on a bad order.
MISTRAL_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

MULTILINGUAL = [
    "Héllo wörld, café naïve façade — déjà vu; Ærøskøbing, Straße, señor, coöperate.",
    "日本語のテキストです。東京は大きな都市です。今日はいい天気ですね。",
    "中文文本，你好世界。我们正在测试分词器。汉字和标点符号。",
    "한국어 문장입니다. 안녕하세요, 세계!",
    "Emoji: 😀😃🎉👍🏽 👨‍👩‍👧 🇫🇷 ❤️ ✨🚀",
    "Русский текст: привет, мир! Ελληνικά: γειά σου κόσμε. עברית: שלום. العربية: مرحبا",
    "Combining: e\u0301 a\u0300 n\u0303 o\u0308 — Z\u0351\u036b\u0343algo\u0489",
    "    indented\tcode\t\twith  many   spaces\n\n\nand newlines\r\n",
]


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[str, ...]:
    """A fixed training corpus: a few stdlib modules' source plus multilingual lines."""
    texts = [inspect.getsource(m) for m in (textwrap, difflib, json.decoder, json.encoder)]
    return tuple(texts + MULTILINGUAL * 8)


def _byte_level_bpe(vocab_size: int, special_tokens: list[str], pre_tokenizer, ignore_merges: bool = False) -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    return tok


def build_gpt2_style(path: str | Path, vocab_size: int = 400) -> Path:
    """GPT-2: byte-level BPE, `<|endoftext|>` as bos/eos/unk, no bos added, saved as GPT2Tokenizer."""
    from transformers import GPT2Tokenizer

    tok = _byte_level_bpe(vocab_size, ["<|endoftext|>"], pre_tokenizers.ByteLevel(add_prefix_space=False))
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    hf = GPT2Tokenizer(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                       unk_token="<|endoftext|>", model_max_length=1024)
    path = Path(path)
    hf.save_pretrained(path)
    return path


LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|reserved_special_token_2|>", "<|eot_id|>"]


def build_llama3_style(path: str | Path, vocab_size: int = 400, chat_template: str | None = LLAMA3_TEMPLATE) -> Path:
    """Llama-3: byte-level BPE behind the Llama-3 split regex, bos added by a TemplateProcessing
    post-processor, `<|eot_id|>` as eos, special tokens appended after the base vocab."""
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok = _byte_level_bpe(vocab_size, [], pre, ignore_merges=True)
    tok.add_special_tokens(LLAMA3_SPECIALS)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                      special_tokens=[(bos, tok.token_to_id(bos))]),
    ])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|eot_id|>",
                                 model_max_length=8192, chat_template=chat_template)
    path = Path(path)
    hf.save_pretrained(path)
    return path


def _sentencepiece_like_bpe(vocab_size: int) -> Tokenizer:
    """Train a BPE like SentencePiece does: merges never cross a word start "▁", rare characters
    stay out of the vocab (limit_alphabet) and are spelled with the 256 `<0xNN>` byte tokens."""
    specials = ["<unk>", "<s>", "</s>"]
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  limit_alphabet=90, show_progress=False)
    trainer_tok.train_from_iterator(corpus(), trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if token not in vocab:
            vocab[token] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(specials)
    return tok


def build_llama2_style(path: str | Path, vocab_size: int = 400, tokenizer_class: str = "LlamaTokenizerFast",
                       chat_template: str | None = MISTRAL_TEMPLATE, metaspace: bool = False) -> Path:
    """Llama-2 / Mistral: SentencePiece-derived BPE with byte fallback, `<unk>`/`<s>`/`</s>`,
    normalizer Prepend("▁")+Replace(" ", "▁") (or, with `metaspace=True`, the newer
    Metaspace(prepend_scheme="first") pre-tokenizer), decoder Replace+ByteFallback+Fuse+Strip, bos added.

    `tokenizer_class="LlamaTokenizerFast"` saves it the way Llama-2 and Mistral ship (transformers 5
    then rebuilds the pipeline on load, with a Metaspace pre-tokenizer); `"PreTrainedTokenizerFast"`
    keeps tokenizer.json authoritative.
    """
    import transformers

    tok = _sentencepiece_like_bpe(vocab_size)
    if metaspace:
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    cls = getattr(transformers, tokenizer_class)
    extra = {"legacy": False} if tokenizer_class.startswith("Llama") else {}
    hf = cls(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
             model_max_length=4096, chat_template=chat_template, **extra)
    path = Path(path)
    hf.save_pretrained(path)
    return path


def build_wordpiece_style(path: str | Path, vocab_size: int = 400, clean_up_tokenization_spaces: bool = True) -> Path:
    """BERT-like WordPiece ([CLS] ... [SEP]); with clean_up_tokenization_spaces, which transformers
    applies on decode for non-BPE models."""
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                                show_progress=False))
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                 sep_token="[SEP]", mask_token="[MASK]",
                                 clean_up_tokenization_spaces=clean_up_tokenization_spaces)
    path = Path(path)
    hf.save_pretrained(path)
    return path
