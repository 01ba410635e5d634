"""The first hour of a new user: --print-config on the training verbs, "did you mean" for verbs,
flags and recipe keys, the error line before the usage, and library errors in the CLI's names."""

from __future__ import annotations

import re

import pytest
import yaml

from llmkit.cli.main import build_parser, cli_names, main, verb_parser
from llmkit.recipe import load_recipe

ROW = re.compile(r"^(\S+) += (.*?) {3,}\(([^()]*)\)$")


def printed_config(out: str) -> dict[str, tuple[object, str]]:
    """{key: (value as YAML reads it, source)} from --print-config's output."""
    lines = out.strip().splitlines()
    assert lines[0].startswith("#")
    rows = {}
    for line in lines[1:]:
        m = ROW.match(line)
        assert m, line
        rows[m.group(1)] = (yaml.safe_load(m.group(2)), m.group(3))
    return rows


def value_at(obj, key: str):
    for part in re.findall(r"[^.\[\]]+", key):
        obj = obj[int(part)] if part.isdigit() else obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def test_pretrain_print_config_names_the_source_of_every_value(tmp_path, capsys):
    from llmkit.pipelines.pretrain import PretrainRecipe

    recipe_file = tmp_path / "mine.yaml"
    recipe_file.write_text("model:\n  preset: tiny-gpt2\n  overrides: {dim: 96}\n"
                           "data:\n  sources:\n    - {path: stdlib, max_bytes: 1000}\n  seq_len: 32\n"
                           "train:\n  steps: 7\n  lr: 0.001\n")
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(recipe_file), "train.lr=0.0005", "train.betas=[0.8,0.9]",
                 "--out", str(run), "--print-config"]) == 0
    rows = printed_config(capsys.readouterr().out)
    assert not run.exists()  # printed, not trained
    yaml_src = f"yaml {recipe_file}"
    assert rows["model.preset"] == ("tiny-gpt2", yaml_src)
    assert rows["model.overrides.dim"] == (96, yaml_src)
    assert rows["data.sources[0].max_bytes"] == (1000, yaml_src)
    assert rows["data.sources[0].kind"] == ("auto", "default")  # a key the YAML's list item left out
    assert rows["train.steps"] == (7, yaml_src)
    assert rows["train.lr"] == (0.0005, "override")  # the override wins over the file
    assert rows["train.betas"] == ([0.8, 0.9], "override")
    assert rows["train.warmup_steps"][1] == "default"
    assert rows["out"] == (str(run), "flag --out")
    # every printed value is the one the recipe object holds, and every section is walked into
    recipe = load_recipe(PretrainRecipe, recipe_file, ["train.lr=0.0005", "train.betas=[0.8,0.9]", f"out={run}"])
    for key, (value, _) in rows.items():
        assert value == value_at(recipe, key), key
    assert {"data.clean.pii", "data.dedup.threshold", "train.seed", "data_dir", "model.init"} <= set(rows)


@pytest.mark.parametrize("argv, key, value, source", [
    (["finetune", "--method", "prefix"], "method", "prefix", "flag --method"),
    (["finetune", "prefix.num_tokens=4"], "prefix.num_tokens", 4, "override"),
    (["align", "reward", "--skip-bad-rows"], "data.skip_bad_rows", True, "flag --skip-bad-rows"),
    (["align", "dpo", "beta=0.2"], "beta", 0.2, "override"),
    (["align", "dpo"], "loss", None, "default"),
    (["align", "ppo", "--reward", "arith-exact"], "reward", "arith-exact", "flag --reward"),
    (["align", "grpo", "--prompts", "builtin:sorting"], "prompts.path", "builtin:sorting", "flag --prompts"),
    (["align", "grpo"], "rollout.samples_per_prompt", None, "default"),
])
def test_every_training_verb_prints_its_config(argv, key, value, source, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "run"), "--print-config"]) == 0
    rows = printed_config(capsys.readouterr().out)
    assert rows[key][1] == source
    if value is not None:  # a default's value is whatever the recipe class says
        assert rows[key][0] == value
    assert rows["out"] == (str(tmp_path / "run"), "flag --out")
    assert not (tmp_path / "run").exists()


def test_data_prepare_prints_its_config_without_out(tmp_path, capsys):
    recipe_file = tmp_path / "data.yaml"
    recipe_file.write_text("data:\n  seq_len: 64\n  dedup: {near: false}\n")
    assert main(["data", "prepare", "--config", str(recipe_file), "--data", "stdlib", "vocab_size=300",
                 "--print-config"]) == 0
    rows = printed_config(capsys.readouterr().out)
    assert rows["seq_len"] == (64, f"yaml {recipe_file}")
    assert rows["dedup.near"] == (False, f"yaml {recipe_file}")
    assert rows["vocab_size"] == (300, "override")
    assert rows["sources[0].path"] == ("stdlib", "flag --data")
    assert rows["seed"][1] == "default"
    # without --print-config, --out is still needed: one line naming it
    assert main(["data", "prepare", "--data", "stdlib"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmkit data: error: --out is missing") and "\n" not in err


def parse_error(capsys, argv: list[str]) -> list[str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_misspelled_verbs_get_a_suggestion(capsys):
    lines = parse_error(capsys, ["pretian"])
    assert lines[0].startswith("llmkit: error: argument VERB: invalid choice: 'pretian': did you mean 'pretrain'?")
    assert lines[1].startswith("usage: llmkit")
    lines = parse_error(capsys, ["align", "dop"])
    assert "invalid choice: 'dop': did you mean 'dpo'?" in lines[0] and lines[0].startswith("llmkit align: error:")


def test_misspelled_flags_get_a_suggestion(capsys):
    lines = parse_error(capsys, ["generate", "--model", "m", "--prompt", "p", "--max-new-tokes", "5"])
    assert lines[0] == "llmkit generate: error: unrecognized arguments: --max-new-tokes 5; did you mean --max-new-tokens?"
    assert lines[1].startswith("usage: llmkit generate")
    lines = parse_error(capsys, ["pretrain", "--modle", "tiny-llama", "--print-config"])
    assert lines[0] == "llmkit pretrain: error: unrecognized arguments: --modle; did you mean --model?"
    lines = parse_error(capsys, ["generate", "--model", "m", "--prompt", "p", "--temprature=1", "--top_pp", "3"])
    assert lines[0].endswith("did you mean --temperature for --temprature, --top-p for --top_pp?")
    lines = parse_error(capsys, ["generate", "--model", "m", "--prompt", "p", "--zzzzzz"])
    assert lines[0] == "llmkit generate: error: unrecognized arguments: --zzzzzz"  # nothing close: no guess


def test_misspelled_recipe_keys_get_a_suggestion(tmp_path, capsys):
    assert main(["pretrain", "train.lr_rate=0.1", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("llmkit pretrain: error: unknown key train.lr_rate in the recipe; "
                                              "did you mean train.lr?")
    recipe_file = tmp_path / "typo.yaml"
    recipe_file.write_text("train:\n  warmup: 5\n")
    assert main(["finetune", "--config", str(recipe_file), "--print-config"]) == 2
    assert "unknown key train.warmup in the recipe; did you mean train.warmup_steps?" in capsys.readouterr().err
    recipe_file.write_text("lr: 0.1\n")  # a key at the wrong level
    assert main(["align", "dpo", "--config", str(recipe_file), "--print-config"]) == 2
    assert "unknown key lr in the recipe; did you mean train.lr?" in capsys.readouterr().err


def test_missing_required_flag_prints_the_error_before_the_usage(capsys):
    lines = parse_error(capsys, ["generate", "--prompt", "hello"])
    assert lines[0] == "llmkit generate: error: the following arguments are required: --model/-m"
    assert lines[1].startswith("usage: llmkit generate")


def test_library_errors_reach_the_user_in_flag_names(tiny_dir, capsys):
    long_prompt = "hello world " * 1000  # more tokens than the tiny model's context window
    assert main(["generate", "--model", str(tiny_dir), "--prompt", long_prompt, "--max-new-tokens", "4"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "with --max-new-tokens 4 that exceeds" in captured.err and "set --truncate-prompt to drop" in captured.err
    assert "truncate_prompt" not in captured.err and "max_new_tokens" not in captured.err
    # the hint is the flag that works
    assert main(["generate", "--model", str(tiny_dir), "--prompt", long_prompt, "--max-new-tokens", "4",
                 "--temperature", "0", "--no-stream", "--truncate-prompt"]) == 0
    assert capsys.readouterr().out.startswith(long_prompt)
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "x", "--top-p", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmkit generate: error: --top-p 1.5 is invalid: use a number in (0, 1]") and "top_p" not in err


def test_only_the_verbs_own_flags_are_renamed():
    parser = build_parser()
    generate = verb_parser(parser, parser.parse_args(["generate", "--model", "m", "--prompt", "p"]))
    assert cli_names("top_p=1.5. min_p=0.2: lower max_new_tokens, truncate_prompt=False, train.top_p=1 "
                     "my_top_p", generate) == (
        "--top-p 1.5. --min-p 0.2: lower --max-new-tokens, no --truncate-prompt, train.top_p=1 my_top_p")
    dpo = verb_parser(parser, parser.parse_args(["align", "dpo"]))
    # loss is a recipe key with no flag; method is both; a dotted key is never a flag
    assert cli_names("method='x' and loss='hinge', data.skip_bad_rows=true", dpo) == (
        "--method 'x' and loss='hinge', data.skip_bad_rows=true")
