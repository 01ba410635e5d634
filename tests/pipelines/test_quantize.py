"""`llmkit quantize`: the report's perplexities are the fp32 model's (checked against transformers
on the same weights and text) and the saved quantised model's; the checkpoint appears whole, an
existing one is kept unless --overwrite."""

from __future__ import annotations

import json
import math

import pytest
import torch

import llmkit
from llmkit.cli.main import main
from llmkit.pipelines.quantize import default_texts
from tests.peers import peer

transformers = peer("transformers")


def hf_perplexity(path, llm, texts) -> float:
    """Each text scored by transformers in one forward pass, the first token predicted from the
    start token, as llmkit's rolling log-likelihood does."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    total, n = 0.0, 0
    for text in texts:
        ids = [llm.start_token_id] + llm.tokenize(text, add_special_tokens=False)
        assert len(ids) - 1 <= llm.context_window  # one window each, so no striding to match
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, :-1].double()
        total += logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
        n += len(ids) - 1
    return math.exp(-total / n)


def test_quantize_command_reports_what_it_saved(tiny_dirs, tmp_path, capsys):
    src, out = tiny_dirs["tiny-llama"], tmp_path / "int8"
    assert main(["quantize", "--model", str(src), "--method", "int8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "quantize.json").read_text())
    assert f"{report['perplexity_change']:+.2%}" in printed and "Linear weights" in printed

    texts = default_texts()
    fp32 = llmkit.load(src)
    assert report["perplexity_before"] == pytest.approx(hf_perplexity(src, fp32, texts), rel=1e-4)
    q = llmkit.load(out)
    (lp, n), = [(sum(a for a, _ in s), sum(b for _, b in s)) for s in [q.loglikelihood_rolling(texts)]]
    assert report["perplexity_after"] == pytest.approx(math.exp(-lp / n), rel=1e-9)
    assert report["perplexity_tokens"] == n
    assert 0 < abs(report["perplexity_change"]) < 0.02
    assert report["linear_bytes_after"] < 0.27 * report["linear_bytes_before"]
    assert report["model_bytes_after"] < report["model_bytes_before"]
    assert report["quantized_modules"] == 2 * 7 + 1 and report["full_precision_linears"] == []
    assert q.generate("def f(", max_new_tokens=6, temperature=0)  # the saved model runs

    # an existing checkpoint is kept unless asked, and nothing half-written is left beside it
    assert main(["quantize", "--model", str(src), "--method", "int4", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and json.loads((out / "quantize.json").read_text())["method"] == "int8"
    assert main(["quantize", "--model", str(src), "--method", "int4", "--group-size", "16", "--no-head",
                 "--out", str(out), "--overwrite"]) == 0
    report4 = json.loads((out / "quantize.json").read_text())
    assert report4["method"] == "int4" and report4["group_size"] == 16
    assert report4["full_precision_linears"] == ["lm_head"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8"]


def test_quantize_command_refuses_bad_input(tiny_dirs, tmp_path, capsys):
    src = tiny_dirs["tiny-llama"]
    assert main(["quantize", "--model", str(src), "--method", "int4", "--group-size", "48",
                 "--out", str(tmp_path / "a")]) == 2
    assert "group-size" in capsys.readouterr().err
    assert main(["quantize", "--model", str(src), "--method", "int8", "--text", str(tmp_path / "nope.txt"),
                 "--out", str(tmp_path / "b")]) == 2
    assert "nope.txt" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_int4_names_the_layers_it_keeps_and_a_group_size_that_fits(tiny_dirs, tmp_path, capsys):
    # tiny-llama: dim 64, MLP width 176 = 11 x 16, so down_proj cannot have groups of 64
    assert main(["quantize", "--model", str(tiny_dirs["tiny-llama"]), "--method", "int4",
                 "--out", str(tmp_path / "q")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "q" / "quantize.json").read_text())
    assert report["full_precision_linears"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert report["suggested_group_size"] == 16 and "--group-size 16" in printed
