"""Sampling options left unset take the model's own settings: its generation_config.json (read
as transformers reads it), a GGUF file's general.sampling.* keys (written by `llmkit export`,
read back with the gguf package), and the pull registry's settings for a packaged GGUF — in the
library, in `llmkit generate`, and in requests to `llmkit serve` that leave a field out."""

from __future__ import annotations

import json
import shutil

import pytest

import llmkit
from llmkit.cli.main import main
from llmkit.models.sampling_defaults import read_generation_config, sampling_defaults
from tests.peers import peer

PROMPT = "def main():"


@pytest.fixture(scope="module")
def greedy_dir(tmp_path_factory, tiny_dir):
    """The tiny model with a generation_config.json that says greedy (do_sample false) and 12 new
    tokens; top_k is there but has no effect on greedy decoding."""
    path = tmp_path_factory.mktemp("greedy") / "model"
    shutil.copytree(tiny_dir, path)
    (path / "generation_config.json").write_text(json.dumps({"do_sample": False, "max_new_tokens": 12, "top_k": 50}))
    return path


def test_generation_config_is_read_as_transformers_reads_it(tmp_path):
    transformers = peer("transformers")
    theirs = transformers.GenerationConfig(do_sample=True, temperature=0.3, top_p=0.8, top_k=20, min_p=0.05,
                                           repetition_penalty=1.1, max_new_tokens=77)
    theirs.save_pretrained(tmp_path)
    ours = read_generation_config(tmp_path)
    back = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert ours == {"temperature": back.temperature, "top_p": back.top_p, "top_k": back.top_k, "min_p": back.min_p,
                    "repetition_penalty": back.repetition_penalty, "max_new_tokens": back.max_new_tokens}
    # do_sample false means greedy whatever the temperature says (transformers warns and decodes greedily)
    (tmp_path / "greedy").mkdir()
    (tmp_path / "greedy" / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.9}))
    assert not transformers.GenerationConfig.from_pretrained(tmp_path / "greedy").do_sample
    assert read_generation_config(tmp_path / "greedy")["temperature"] == 0.0


def test_saved_settings_reach_transformers(tmp_path, tiny_dir):
    transformers = peer("transformers")
    llm = llmkit.load(tiny_dir)
    llm.generation_defaults = {"temperature": 0.4, "top_p": 0.85, "top_k": 30}
    llm.save(tmp_path / "m")
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path / "m")
    assert (theirs.do_sample, theirs.temperature, theirs.top_p, theirs.top_k) == (True, 0.4, 0.85, 30)
    assert llmkit.load(tmp_path / "m").generation_defaults == {"temperature": 0.4, "top_p": 0.85, "top_k": 30}


def test_the_library_and_the_cli_use_the_model_settings_for_what_is_unset(greedy_dir, tiny_dir, capsys):
    llm = llmkit.load(greedy_dir)
    greedy = llm.generate(PROMPT, temperature=0, max_new_tokens=12)
    # unset temperature: the model's do_sample false; unset max_new_tokens: its 12
    assert llm.generate(PROMPT, seed=1) == llm.generate(PROMPT, seed=2) == greedy
    assert len(llm.complete([PROMPT], seed=3)[0].token_ids) == 12
    # a call that names a sampling option samples exactly as it says: the model's repetition
    # penalty (here an absurd one) does not leak into a greedy evaluation
    llm.generation_defaults = {"temperature": 0.0, "repetition_penalty": 1000.0}
    assert llm.generate(PROMPT, temperature=0, max_new_tokens=12) == greedy
    assert llm.generate(PROMPT, max_new_tokens=12) != greedy
    llm.generation_defaults = {"temperature": 0.0, "top_k": 50, "max_new_tokens": 12}

    def cli(model, *extra):
        assert main(["generate", "-m", str(model), "-p", PROMPT, "--no-stream", *extra]) == 0
        return capsys.readouterr().out

    assert cli(greedy_dir, "--seed", "1") == cli(greedy_dir, "--seed", "2") == PROMPT + greedy + "\n"
    # an option given on the command line wins over the model's setting
    sampled = {cli(greedy_dir, "--seed", str(s), "--temperature", "1.0") for s in range(3)}
    assert len(sampled) > 1
    # without a generation config: llmkit's default temperature (0.7) samples
    assert len({cli(tiny_dir, "--seed", str(s), "--max-new-tokens", "12") for s in range(3)}) > 1


def test_export_writes_the_settings_into_the_gguf_and_load_reads_them(tmp_path, tiny_dir):
    gguf = peer("gguf")
    model = tmp_path / "m"
    shutil.copytree(tiny_dir, model)
    (model / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.25, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.05}))
    out = tmp_path / "m.gguf"
    assert main(["export", "-m", str(model), "--type", "f32", "-o", str(out)]) == 0
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["general.sampling.temp"].contents() == pytest.approx(0.25)
    assert fields["general.sampling.top_p"].contents() == pytest.approx(0.9)
    assert fields["general.sampling.top_k"].contents() == 40
    assert fields["general.sampling.penalty_repeat"].contents() == pytest.approx(1.05)
    assert llmkit.load(out).generation_defaults == pytest.approx(
        {"temperature": 0.25, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.05})


def test_the_packaged_smollm2_gguf_gets_its_model_card_settings(smollm2):
    # SmolLM2's model card samples it at temperature 0.2, top_p 0.9; the GGUF file carries none
    assert sampling_defaults(smollm2.path) == {"temperature": 0.2, "top_p": 0.9}


def test_serve_fills_what_a_request_leaves_out_and_lists_the_settings(greedy_dir):
    from fastapi.testclient import TestClient

    from llmkit.serve import ServedModel, create_app

    llm = llmkit.load(greedy_dir)
    greedy = llm.generate(PROMPT, temperature=0, max_new_tokens=12)
    with TestClient(create_app([ServedModel("greedy", llm)])) as client:
        card = client.get("/v1/models").json()["data"][0]
        assert card["generation_defaults"] == {"temperature": 0.0, "top_k": 50, "max_new_tokens": 12}
        texts = {client.post("/v1/completions", json={"model": "greedy", "prompt": PROMPT, "seed": s}).json()
                 ["choices"][0]["text"] for s in range(3)}
        assert texts == {greedy}
        sampled = {client.post("/v1/completions", json={"model": "greedy", "prompt": PROMPT, "seed": s,
                                                         "temperature": 1.0}).json()["choices"][0]["text"]
                   for s in range(3)}
        assert len(sampled) > 1
        # a request for greedy decoding (lm-eval's) gets the plain argmax, not the model's penalty
        llm.generation_defaults = {"temperature": 0.0, "repetition_penalty": 1000.0, "max_new_tokens": 12}

        def text(**fields):
            body = {"model": "greedy", "prompt": PROMPT, **fields}
            return client.post("/v1/completions", json=body).json()["choices"][0]["text"]

        assert text(temperature=0) == greedy
        assert text() != greedy  # nothing asked: the model's own settings, penalty included


def test_settings_generation_refuses_are_dropped_not_raised(tiny_dir, caplog):
    llm = llmkit.load(tiny_dir)
    bad = llmkit.LocalLLM(llm.model, llm.tokenizer, "odd", generation_defaults={"top_p": 0.0, "temperature": 0.0})
    assert bad.generation_defaults == {"temperature": 0.0} and "top_p=0.0" in caplog.text
    assert bad.generate(PROMPT, max_new_tokens=4) == llm.generate(PROMPT, max_new_tokens=4, temperature=0)


def test_chat_set_layers_like_the_command_line(tiny_dir):
    import io

    from llmkit.cli.chat import ChatSession, Style
    from llmkit.cli.main import build_parser

    llm = llmkit.load(tiny_dir)
    llm.generation_defaults = {"temperature": 0.5, "repetition_penalty": 1.3}
    args = build_parser("chat").parse_args(["chat", "-m", str(tiny_dir)])
    session = ChatSession(llm, args, io.StringIO(), io.StringIO(), Style(io.StringIO()), 0.0)
    assert (session.gen.temperature, session.gen.repetition_penalty) == (0.5, 1.3)
    session.command("/set temperature 0")  # greedy asked: the plain argmax, as --temperature 0 gives
    assert (session.gen.temperature, session.gen.repetition_penalty) == (0.0, 1.0)
    session.command("/set temperature 0.7")
    assert (session.gen.temperature, session.gen.repetition_penalty) == (0.7, 1.3)
    session.command("/set top_p 1.5")  # refused, and nothing changes
    assert session.gen.top_p == 1.0 and args.top_p is None
