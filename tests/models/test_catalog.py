"""What a model on disk is (format, quantisation, size, memory once loaded, source), the model
cache's names and removal, and the quantisation /v1/models reports. Every expected value is read
independently: sizes with os.stat, GGUF types with the `gguf` package's GGUFReader, safetensors
dtypes with `safetensors`, memory from the loaded model's tensors."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections import Counter

import pytest

from tests.peers import peer

gguf = peer("gguf")

import llmkit  # noqa: E402
from llmkit.models.catalog import inspect_model, list_cached, remove_cached, stored_quantization  # noqa: E402
from llmkit.models.gguf import _reader, save_gguf  # noqa: E402
from llmkit.models.resolve import ModelNotFoundError, resolve_model  # noqa: E402


def files_bytes(folder) -> int:
    return sum(os.stat(os.path.join(d, f)).st_size for d, _, fs in os.walk(folder) for f in fs)


def gguf_types(path) -> tuple[str, Counter]:
    """(general.file_type as llama.cpp names it, elements per tensor type), by the gguf package's
    GGUFReader (over a plain view of its memory map: the same parse in a third of the time)."""
    reader = _reader(path)
    field = reader.fields["general.file_type"]
    file_type = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name
    elements = Counter()
    for t in reader.tensors:
        elements[t.tensor_type.name] += int(t.n_elements)
    return file_type, elements


def loaded_bytes(model) -> int:
    """Bytes of every distinct tensor the loaded model keeps in its state (a tied weight once)."""
    seen = {}
    for t in model.state_dict(keep_vars=True).values():
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


@pytest.fixture(scope="module")
def tiny_ggufs(tiny_dir, tmp_path_factory):
    llm = llmkit.load(tiny_dir)
    root = tmp_path_factory.mktemp("ggufs")
    return {kind: save_gguf(llm.model, llm.tokenizer, root / f"tiny-{kind}.gguf", type=kind) for kind in ("q8_0", "f16")}


def test_smollm2_q4_1_file(smollm2):
    path = smollm2.path
    file_type, elements = gguf_types(path)
    stored = inspect_model(path)
    assert ".Q4_1." in path.name and file_type == "MOSTLY_Q4_1"  # what its publisher and its header say
    assert stored.format == "GGUF" and stored.quantization == "Q4_1" and stored.quantized
    assert elements.most_common(1)[0][0] == "Q4_1"
    assert stored.size_bytes == os.stat(path).st_size
    # llmkit dequantises to fp32: every weight of the file, 4 bytes each (the head is tied: no output.weight)
    assert stored.loaded_bytes == 4 * sum(elements.values())
    assert stored.config.family == "llama"


@pytest.mark.parametrize("kind", ["q8_0", "f16"])
def test_gguf_type_and_memory_once_loaded(kind, tiny_ggufs):
    path = tiny_ggufs[kind]
    file_type, _ = gguf_types(path)
    stored = inspect_model(path)
    assert "MOSTLY_" + stored.quantization == file_type
    assert stored.quantized is (kind == "q8_0")
    assert stored.size_bytes == os.stat(path).st_size
    assert stored.loaded_bytes == loaded_bytes(llmkit.load(path).model)


def test_safetensors_dtype_and_llmkit_quantised(tiny_dir, tmp_path):
    from safetensors import safe_open

    from llmkit.models.hf import save_pretrained
    from llmkit.quant.weight_only import quantize_model

    llm = llmkit.load(tiny_dir)
    save_pretrained(llm.model, tmp_path / "bf16", dtype="bf16")
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        dtypes = Counter(f.get_slice(k).get_dtype() for k in f.keys())
    assert set(dtypes) == {"BF16"}
    bf16 = inspect_model(tmp_path / "bf16")
    assert (bf16.format, bf16.quantization, bf16.quantized) == ("safetensors", "bf16", False)
    assert bf16.size_bytes == files_bytes(tmp_path / "bf16")
    assert inspect_model(tiny_dir).quantization == "fp32"

    quantize_model(llm.model, "int8")
    llm.save(tmp_path / "int8")
    saved = json.loads((tmp_path / "int8" / "config.json").read_text())["quantization_config"]
    int8 = inspect_model(tmp_path / "int8")
    assert saved["weights"] == "int8" and int8.quantization == "llmkit int8" and int8.quantized
    assert int8.loaded_bytes == loaded_bytes(llmkit.load(tmp_path / "int8").model)
    assert stored_quantization(tmp_path / "int8") == "llmkit int8" and stored_quantization(tiny_dir) is None


def test_cache_listing_and_removal(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    assert list_cached() == []
    models = tmp_path / "home" / "models"
    shutil.copytree(tiny_dir, models / "org--tiny")
    (models / "half").mkdir()  # an unfinished download: listed, so that it can be removed
    listed = {m.name: m for m in list_cached()}
    assert set(listed) == {"org/tiny", "half"}
    assert listed["org/tiny"].source == "unknown" and listed["org/tiny"].problem is None
    assert listed["half"].problem
    expected = files_bytes(models / "org--tiny")
    path, freed = remove_cached("org/tiny")
    assert path == models / "org--tiny" and freed == expected and not path.exists()
    assert [m.name for m in list_cached()] == ["half"]


def test_removal_refuses_outside_the_cache_and_unknown_names(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    outside = tmp_path / "outside"
    shutil.copytree(tiny_dir, outside)
    with pytest.raises(ValueError, match="not in the model cache"):
        remove_cached(str(outside))
    with pytest.raises(ValueError, match="not in the model cache"):
        remove_cached(str(models / ".." / ".." / "outside"))
    (models / "linked").symlink_to(outside)  # removing a link in the cache leaves what it points to
    remove_cached("linked")
    assert not (models / "linked").exists() and (outside / "config.json").is_file()
    shutil.copytree(tiny_dir, models / "mine")
    with pytest.raises(ModelNotFoundError, match="did you mean mine\\?"):
        remove_cached("mine2")
    assert (models / "mine" / "config.json").is_file()


def test_not_found_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"did you mean smollm2-135m-instruct\?.*llmkit pull smollm2"):
        resolve_model("smolm2-135m-instruct")
    for path in ("./no/such", "no/such/model", "/no/such", "~/no-such-model", "missing.gguf"):
        with pytest.raises(ModelNotFoundError, match=f"^no such file or directory: {path}$"):
            resolve_model(path)
    with pytest.raises(ModelNotFoundError, match="llmkit pull someorg/somemodel`"):
        resolve_model("someorg/somemodel")


def test_served_gguf_reports_its_quantisation(tiny_ggufs):
    from llmkit.serve import ServerSettings, build_server
    from tests.serve.conftest import Running

    path = tiny_ggufs["q8_0"]
    file_type, _ = gguf_types(path)
    llm = llmkit.load(path)
    built = build_server(llm, ServerSettings(name="tiny", model=str(path), log_requests=False, max_batch=1))
    with Running(built.app) as running:
        cards = json.load(urllib.request.urlopen(f"{running.url}/v1/models", timeout=30))["data"]
    assert [c["quantization"] for c in cards] == [file_type.removeprefix("MOSTLY_")] == ["Q8_0"]
    # the fp32 weights alone do not tell: without the file the card has none
    plain = build_server(llm, ServerSettings(name="tiny", log_requests=False, max_batch=1))
    assert plain.models[0].quantization is None
