"""One account of quantised weight bytes: what `llmkit info`, `ModelConfig.weight_bytes` and the
memory estimate say an int8 / int4 model weighs is the size of the tensors `llmkit quantize` writes."""

from __future__ import annotations

import pytest
from safetensors import safe_open
from torch import nn

from llmkit.cli.main import main
from llmkit.models.hf import read_config
from llmkit.quant.layout import linear_bytes
from llmkit.quant.weight_only import Int4Linear, Int8Linear
from llmkit.scaling import estimate_memory


def tensor_bytes(directory) -> int:
    """The bytes of every tensor in a checkpoint's safetensors files, as stored."""
    total = 0
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("out_features, in_features, group_size", [(96, 128, 32), (7, 64, 64), (5, 48, 16)])
def test_one_linear_as_stored(out_features, in_features, group_size):
    lin = nn.Linear(in_features, out_features)
    stored = {"int8": Int8Linear.from_linear(lin), "int4": Int4Linear.from_linear(lin, group_size)}
    for method, q in stored.items():
        assert linear_bytes(out_features, in_features, method, group_size) == q.weight_bytes()
    assert linear_bytes(4, 48, "int4", 32) == 4 * 4 * 48  # 48 inputs make no groups of 32: it stays fp32


# tiny-llama: tied head, SwiGLU whose down_proj is 176 wide (not a multiple of 64: int4 leaves it
# fp32 at the default group, quantises it in groups of 16); tiny-gpt2: biases, learned positions
@pytest.mark.parametrize("preset, method, group", [("tiny-llama", "int8", None), ("tiny-llama", "int4", None),
                                                   ("tiny-llama", "int4", 16), ("tiny-gpt2", "int4", None)])
def test_info_and_the_estimate_describe_what_quantize_writes(tiny_dirs, tmp_path, capsys, preset, method, group):
    text = tmp_path / "text.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 4)
    out = tmp_path / "q"
    args = ["quantize", "--model", str(tiny_dirs[preset]), "--method", method, "--out", str(out), "--text", str(text)]
    assert main(args + (["--group-size", str(group)] if group else [])) == 0
    real = tensor_bytes(out)
    cfg = read_config(out)
    assert cfg.weight_bytes(method, **({"group_size": group} if group else {})) == real
    if group is None:  # the defaults of `llmkit info` and of `llmkit quantize` are one layout
        assert estimate_memory(cfg, dtype=method).weights == real
        capsys.readouterr()
        assert main(["info", "--model", str(out)]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"weights {method}"))
        assert row.split()[2:4] == [f"{real / 2**20:.1f}", "MiB"], row
    full = tensor_bytes(tiny_dirs[preset])  # and quantising does save: codes are smaller than fp32
    assert real < full
