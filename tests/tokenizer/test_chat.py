"""Chat templates render exactly as transformers' apply_chat_template does."""

from __future__ import annotations

import json
import shutil

import jinja2
import pytest

from llmkit.tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer
from tests.tokenizer.builders import CHATML_TEMPLATE, LLAMA3_TEMPLATE

SYSTEM = {"role": "system", "content": "You are terse. Answer <b>&'quoted'</b> in français."}
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [SYSTEM, {"role": "user", "content": "2+2?"}],
    [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello. 日本語 😀"},
     {"role": "user", "content": "  spaced  \n"}, {"role": "assistant", "content": "ok", "name": None}],
]

FANCY_TEMPLATE = """
{%- if tools %}{{ '<|im_start|>system\\nTools:\\n' }}{% for tool in tools %}{{ tool | tojson }}
{%- if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message.role == 'system' and tools %}{% continue %}{% endif %}
    {%- if ns.turns >= max_turns %}{% break %}{% endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- '<|im_start|>' + message.role + '\\n' }}
    {%- if message.thinking is defined %}{{ '<think>' + message.thinking + '</think>' }}{% endif %}
    {%- if message.tool_calls is defined %}{{ message.tool_calls | tojson(indent=2, sort_keys=true) }}
    {%- else %}{% generation %}{{ message.content }}{% endgeneration %}{% endif %}
    {{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' + (eos_token | default('')) }}{% endif %}
{{- strftime_now('%Y')[:0] }}
"""
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & 'here'",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
TOOL_CHAT = [SYSTEM, {"role": "user", "content": "Weather in Zürich?"},
             {"role": "assistant", "content": None, "reasoning_content": "need tool",
              "tool_calls": [{"type": "function",
                              "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
             {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "user", "content": "and tomorrow?"}]


def _both(tok, hf, messages, **kw):
    ours = tok.apply_chat_template(messages, **kw)
    theirs = hf.apply_chat_template(messages, tokenize=False, **kw)
    return ours, theirs


@pytest.mark.parametrize("style", ["trained", "llama3", "llama2"])
@pytest.mark.parametrize("gen", [False, True])
def test_templates_match_transformers(style, gen, tok_dirs, trained, auto_tokenizer):
    path = trained[1] if style == "trained" else tok_dirs[style]
    tok, hf = Tokenizer.from_dir(path), auto_tokenizer(path)
    for messages in CONVERSATIONS:
        ours, theirs = _both(tok, hf, messages, add_generation_prompt=gen)
        assert ours == theirs
        ids = hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True, return_dict=False)
        assert tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True) == ids


def test_known_renderings(tok_dirs, trained):
    chat = CONVERSATIONS[1]
    assert trained[0].apply_chat_template(chat, add_generation_prompt=True) == (
        f"<|im_start|>system\n{SYSTEM['content']}<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n")
    llama3 = Tokenizer.from_dir(tok_dirs["llama3"]).apply_chat_template(chat, add_generation_prompt=True)
    assert llama3.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert llama3.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    mistral = Tokenizer.from_dir(tok_dirs["llama2"]).apply_chat_template(CONVERSATIONS[2])
    assert mistral.startswith(f"<s> [INST] {SYSTEM['content']}\n\nHi [/INST] Hello.") and mistral.endswith(" ok</s>")


def test_mistral_template_raises_on_bad_role_order(tok_dirs, auto_tokenizer):
    tok, hf = Tokenizer.from_dir(tok_dirs["llama2"]), auto_tokenizer(tok_dirs["llama2"])
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(jinja2.exceptions.TemplateError) as theirs:
        hf.apply_chat_template(bad, tokenize=False)
    with pytest.raises(jinja2.exceptions.TemplateError, match="roles must alternate") as ours:
        tok.apply_chat_template(bad)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("gen", [False, True])
def test_tojson_loopcontrols_namespace_tools_kwargs(gen, trained, auto_tokenizer):
    tok, hf = trained[0], auto_tokenizer(trained[1])
    for messages, tools in ((TOOL_CHAT, TOOLS), (CONVERSATIONS[2], None)):
        for max_turns in (2, 10):
            ours, theirs = _both(tok, hf, messages, add_generation_prompt=gen, tools=tools,
                                 chat_template=FANCY_TEMPLATE, max_turns=max_turns)
            assert ours == theirs
    full = tok.apply_chat_template(TOOL_CHAT, tools=TOOLS, chat_template=FANCY_TEMPLATE, max_turns=10)
    assert "Weather <now> & 'here'" in full and "Zürich" in full  # tojson: no HTML escaping, no \\u escapes
    assert "<think>need tool</think>" in full  # reasoning_content is aliased to `thinking`


def test_continue_final_message_matches_transformers(trained, auto_tokenizer):
    tok, hf = trained[0], auto_tokenizer(trained[1])
    chat = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi th"}]
    ours, theirs = _both(tok, hf, chat, continue_final_message=True)
    assert ours == theirs and ours.endswith("Hi th")


def _variant(src, dst, config_template=None, jinja=None):
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink()
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    if config_template is not None:
        cfg["chat_template"] = config_template
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    if jinja is not None:
        (dst / "chat_template.jinja").write_text(jinja)
    return dst


def test_template_sources(trained, tmp_path, auto_tokenizer):
    src = trained[1]
    as_str = _variant(src, tmp_path / "str", config_template=LLAMA3_TEMPLATE)
    as_list = _variant(src, tmp_path / "list", config_template=[{"name": "tool_use", "template": "TOOLS"},
                                                               {"name": "default", "template": LLAMA3_TEMPLATE}])
    both = _variant(src, tmp_path / "both", config_template="{{ 'from config' }}", jinja=CHATML_TEMPLATE)
    none = _variant(src, tmp_path / "none")
    assert Tokenizer.from_dir(as_str).chat_template == LLAMA3_TEMPLATE
    assert Tokenizer.from_dir(as_list).chat_template == LLAMA3_TEMPLATE
    assert Tokenizer.from_dir(as_list).apply_chat_template(CONVERSATIONS[0], tools=TOOLS) == "TOOLS"
    assert Tokenizer.from_dir(both).chat_template == CHATML_TEMPLATE  # the .jinja file wins
    for path in (as_str, as_list, both):
        ours, theirs = _both(Tokenizer.from_dir(path), auto_tokenizer(path), CONVERSATIONS[2],
                             add_generation_prompt=True)
        assert ours == theirs
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer.from_dir(none).apply_chat_template(CONVERSATIONS[0])
    tok = Tokenizer.from_dir(none)
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    assert tok.apply_chat_template(CONVERSATIONS[0]) == "<|im_start|>user\nHello!<|im_end|>\n"


def test_save_writes_named_templates(trained, tmp_path, auto_tokenizer):
    tok = Tokenizer.from_dir(trained[1])
    tok.chat_templates["tool_use"] = "{{ 'tool template' }}"
    tok.save(tmp_path / "named")
    assert (tmp_path / "named" / "additional_chat_templates" / "tool_use.jinja").is_file()
    hf = auto_tokenizer(tmp_path / "named")
    assert hf.apply_chat_template(CONVERSATIONS[0], tools=TOOLS, tokenize=False) == "tool template"
    assert Tokenizer.from_dir(tmp_path / "named").apply_chat_template(CONVERSATIONS[0], tools=TOOLS) == "tool template"
    assert Tokenizer.from_dir(tmp_path / "named").chat_template == tok.chat_template


@pytest.mark.parametrize("messages, error, match", [
    ("hello", TypeError, "messages must be a list of dicts"),
    ([], ValueError, "messages is empty"),
    ([{"role": "user", "content": "a"}, "b"], TypeError, r"messages\[1\] must be a dict"),
    ([{"content": "a"}], ValueError, r"messages\[0\] has no 'role'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant"}], ValueError,
     r"messages\[1\] \(role 'assistant'\) has no 'content'"),
    ([{"role": 3, "content": "a"}], TypeError, r"messages\[0\]\['role'\] must be a string"),
    ([{"role": "user", "content": 3}], TypeError, r"messages\[0\]\['content'\] must be a string or a list"),
])
def test_malformed_messages(trained, messages, error, match):
    with pytest.raises(error, match=match):
        trained[0].apply_chat_template(messages)
