"""Bad checkpoints get a clear error that names the problem, and nothing half-loaded."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmkit.models.hf import CheckpointError, load_pretrained, save_pretrained
from llmkit.models import Transformer, preset
from tests.hf_models import build_hf_model
from tests.peers import peer

peer("transformers")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_hf_model("llama-gqa", tmp_path_factory.mktemp("llama"))


def _copy(src, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    return dst


def test_unsupported_model_type_lists_supported(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "falcon"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="'falcon'.*gpt2, llama, mistral, qwen2"):
        load_pretrained(d)


def test_missing_tensor_is_named(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path)
    sd = load_file(d / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_pretrained(d)


def test_misshaped_tensor_names_both_shapes(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path)
    sd = load_file(d / "model.safetensors")
    sd["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"k_proj\.weight has shape \[64, 64\].*\[32, 64\]"):
        load_pretrained(d)


def test_truncated_file(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained(d)


def test_unexpected_tensor_is_named(llama_dir, tmp_path):
    d = _copy(llama_dir, tmp_path)
    sd = load_file(d / "model.safetensors")
    sd["model.layers.7.extra.weight"] = torch.zeros(2)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.7\.extra\.weight"):
        load_pretrained(d)


def test_pickle_only_checkpoint_is_refused(llama_dir, tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(llama_dir / "config.json", d)
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_pretrained(d)


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_pretrained(tmp_path)


def test_missing_shard_named(tmp_path):
    model = Transformer(preset("tiny-llama"))
    files = save_pretrained(model, tmp_path, max_shard_bytes=100_000)
    files[-1].unlink()
    with pytest.raises(CheckpointError, match=files[-1].name):
        load_pretrained(tmp_path)


def test_save_keeps_old_weights_if_writing_fails(tmp_path, monkeypatch):
    """Atomic writes: a crash during save leaves the previous model.safetensors intact."""
    model = Transformer(preset("tiny-llama"))
    save_pretrained(model, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("llmkit.models.hf.save_file", boom)
    with pytest.raises(OSError):
        save_pretrained(Transformer(preset("tiny-llama")), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
