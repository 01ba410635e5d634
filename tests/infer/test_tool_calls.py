"""Tool calls in the inference layer: the format a model writes, the parser that reads it back
(whole and in deltas), the grammar that makes every call's arguments parse and validate, the
prompts for templates with and without native tools — checked against transformers' own response
parser and chat-template rendering with Qwen2.5's real template (shipped by trl)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmkit.infer.tool_calls import (ToolCallError, call_text, tool_messages, tool_mode, tool_prompt,
                                     tool_specs)
from llmkit.infer.tool_parse import (ArgumentsDelta, CallStart, ContentDelta, Finish, ToolCallParser, parse_tool_calls,
                                     reply_from_events, tool_events)
from tests.peers import peer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                                    "b": {"type": "integer", "minimum": 0, "maximum": 99}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


# ----------------------------------------------------------------------------- parsing
def test_parse_content_and_parallel_calls():
    text = ("Let me check.\n" + call_text("get_weather", {"city": "Lisbon", "unit": "celsius"}) + "\n"
            + call_text("add", '{"a": 2, "b": 3}'))
    reply = parse_tool_calls(text)
    assert reply.content == "Let me check."  # the line break before a call is the format's
    assert [(c.name, c.parsed_arguments()) for c in reply.tool_calls] == [
        ("get_weather", {"city": "Lisbon", "unit": "celsius"}), ("add", {"a": 2, "b": 3})]
    assert reply.tool_calls[1].arguments == '{"a": 2, "b": 3}'  # the text as written, not re-serialised
    assert reply.finish_reason == "tool_calls"
    assert len({c.id for c in reply.tool_calls}) == 2 and all(c.id.startswith("call_") for c in reply.tool_calls)
    message = reply.message()
    assert message["role"] == "assistant" and message["tool_calls"][0]["function"]["name"] == "get_weather"


def test_plain_text_and_text_that_only_resembles_a_marker():
    assert parse_tool_calls("Hello <tool there").content == "Hello <tool there"
    reply = parse_tool_calls("a < b and <tool_calls are fine", "length")
    assert reply.content == "a < b and <tool_calls are fine" and reply.tool_calls == []
    assert reply.finish_reason == "length"


def test_calls_with_braces_and_escapes_inside_strings():
    args = {"code": 'print("}{")\nx = {"a": [1, 2]}', "path": "C:\\dir\\}"}
    reply = parse_tool_calls(call_text("run", args))
    assert reply.tool_calls[0].parsed_arguments() == args and reply.content is None


def test_a_call_ended_inside_its_arguments_is_not_reported_as_tool_calls():
    """A stop string (or an error) that ends the text inside a call: the reason stays "stop"."""
    reply = parse_tool_calls('<tool_call>\n{"name": "add", "arguments": {"a": ', "stop")
    assert reply.finish_reason == "stop" and reply.tool_calls[0].arguments == '{"a": '
    assert parse_tool_calls(call_text("add", {"a": 1}), "stop").finish_reason == "tool_calls"


def test_a_call_cut_off_keeps_what_was_written_and_a_cut_marker_is_dropped():
    reply = parse_tool_calls('<tool_call>\n{"name": "add", "arguments": {"a": 1', "length")
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [("add", '{"a": 1')]
    assert reply.finish_reason == "length"
    reply = parse_tool_calls("Sure.\n<tool_call>\n{\"na", "length")
    assert reply.content == "Sure." and reply.tool_calls == []


def test_streaming_in_any_split_gives_the_same_reply():
    text = ("I will call two tools.\n" + call_text("get_weather", {"city": "Porto <3", "unit": "celsius"}) + "\n"
            + call_text("add", {"a": 40, "b": 2}) + "\nDone.")
    whole = parse_tool_calls(text)
    rng = random.Random(0)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 40)))
        pieces = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        parser, events = ToolCallParser(), []
        for piece in pieces:
            events += parser.feed(piece)
        events += parser.close()
        streamed = reply_from_events(events + [Finish(parser.reply("stop").finish_reason)])
        assert streamed.content == whole.content == "I will call two tools.\nDone."
        assert [(c.name, c.arguments) for c in streamed.tool_calls] == [(c.name, c.arguments) for c in whole.tool_calls]
        # every call opens before any of its arguments, and no marker text leaks into the content
        starts = [e.index for e in events if isinstance(e, CallStart)]
        assert starts == [0, 1]
        assert all("<tool_call>" not in e.text for e in events if isinstance(e, ContentDelta))


def test_parser_matches_transformers_response_parser_on_qwen_output():
    """transformers' serving layer parses Qwen2.5 output with its response template: same calls."""
    transformers = peer("transformers")
    from transformers.cli.serving.utils import _RESPONSE_TEMPLATE_FALLBACKS

    template = next(v for k, v in _RESPONSE_TEMPLATE_FALLBACKS.items() if "qwen2" in k)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=_byte_tokenizer())
    texts = [call_text("get_weather", {"city": "Lisbon", "unit": "celsius"}),
             "Checking.\n" + call_text("add", {"a": 1, "b": 2}) + "\n" + call_text("add", {"a": 3, "b": 4})]
    for text in texts:
        ours = parse_tool_calls(text)
        theirs = tok.parse_response(tok.encode(text + "<|im_end|>"), template,
                                    prefix=tok.encode("<|im_start|>assistant\n"))
        assert [(c.name, c.parsed_arguments()) for c in ours.tool_calls] == [
            (c["function"]["name"], c["function"]["arguments"]) for c in theirs["tool_calls"]]
        assert (ours.content or "") == (theirs.get("content") or "").strip()


def _byte_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return tok


# ----------------------------------------------------------------------------- tools and choice
def test_tool_specs_accept_tools_openai_entries_and_bare_functions():
    from llmkit.apps import Tool

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    specs = tool_specs([Tool.from_function(add), WEATHER, {"name": "ping", "parameters": {"type": "object"}}])
    assert [s["function"]["name"] for s in specs] == ["add", "get_weather", "ping"]
    assert specs[0]["function"]["parameters"]["required"] == ["a", "b"]
    strict = tool_specs([{"type": "function", "function": {**ADD["function"], "strict": True}}])
    assert strict[0]["function"]["strict"] is True  # what OpenAI's API reads, kept for remote servers


@pytest.mark.parametrize("tools, choice, fragment, param", [
    ([WEATHER, WEATHER], None, "two tools are named 'get_weather'", "tools[1].function.name"),
    ([{"name": "bad name!"}], None, "must be 1-64 letters", "tools[0].function.name"),
    ([{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "strin"}}}}], None,
     "is not valid JSON Schema", "tools[0].function.parameters"),
    ([{"name": "f", "parameters": {"type": "array"}}], None, "of type 'object'", "tools[0].function.parameters"),
    ([{"name": "f", "parameters": {"type": "object", "properties": {"c": {"type": "string", "not": {"enum": ["x"]}}}}}],
     None, "properties.c.not: 'not' cannot be enforced", "tools[0].function.parameters"),
    ([{"name": "f", "parameters": {"type": "object", "properties": {"c": {"oneOf": [{"type": "integer"}]}}}}],
     None, "'oneOf' cannot be enforced by the grammar (use anyOf)", "tools[0].function.parameters"),
    ([{"name": "f", "parameters": {"type": "object", "properties": {"c": {"type": "array", "uniqueItems": True}}}}],
     None, "'uniqueItems' cannot be enforced", "tools[0].function.parameters"),
    ([{"name": "f", "parameters": {"type": "object", "properties": {"c": {"type": "string", "pattern": "(?=a)a"}}}}],
     None, "uses a lookaround", "tools[0].function.parameters"),
    ([{"name": "f", "parameters": {"type": "object", "properties": {
        "c": {"type": "string", "pattern": "(([a-z]{1,10}){1,10}){1,10}"}}}}], None,
     "nests counted repetitions (100 expansions", "tools[0].function.parameters"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "'nope', which is not among the tools", "tool_choice"),
    (TOOLS, "sometimes", "tool_choice 'sometimes' must be", "tool_choice"),
    ([], "required", "needs tools", "tool_choice"),
])
def test_bad_tools_and_choices_are_named(tools, choice, fragment, param):
    with pytest.raises(ToolCallError, match="") as e:
        tool_mode(choice, tool_specs(tools))
    assert fragment in str(e.value) and e.value.param == param


def test_a_tool_message_must_answer_a_known_call():
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    ok = [{"role": "user", "content": "1+2?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
          {"role": "tool", "tool_call_id": "call_1", "content": "3"}]
    assert tool_messages(ok, tool_specs(TOOLS), native=True)[2]["content"] == "3"
    bad = ok[:2] + [{"role": "tool", "tool_call_id": "call_9", "content": "3"}]
    with pytest.raises(ToolCallError, match="tool_call_id 'call_9', which no earlier assistant message called") as e:
        tool_messages(bad, tool_specs(TOOLS), native=True)
    assert e.value.param == "messages[2].tool_call_id"


# ----------------------------------------------------------------------------- prompts
QWEN_TEMPLATE = "qwen2_5.jinja"


def _qwen_template() -> str:
    trl = peer("trl")
    return (Path(trl.__file__).parent / "chat_templates" / QWEN_TEMPLATE).read_text()


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Lisbon, and 2+3?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Lisbon", "unit": "celsius"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
    {"role": "tool", "tool_call_id": "call_a", "content": "18 C, sunny"},
    {"role": "tool", "tool_call_id": "call_b", "content": "5"},
]


def test_native_template_renders_as_transformers_does(tiny_tokenizer):
    """A template that speaks the format (Qwen2.5's, from trl) renders tools, calls and results
    itself: the prompt equals transformers' apply_chat_template with arguments as objects."""
    transformers = peer("transformers")
    tok = _with_template(tiny_tokenizer, _qwen_template())
    template = tok.chat_template
    ours_ids, grammar = tool_prompt(tok, CONVERSATION, TOOLS, "auto")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend)
    expected_chat = [dict(m) for m in CONVERSATION]
    expected_chat[2] = {**CONVERSATION[2], "tool_calls": [
        {**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
        for c in CONVERSATION[2]["tool_calls"]]}
    expected = hf.apply_chat_template(expected_chat, tools=TOOLS, chat_template=template, tokenize=False,
                                      add_generation_prompt=True)
    assert tok.decode(ours_ids, skip_special_tokens=False) == expected
    assert '{"name": "get_weather", "arguments": {"city": "Lisbon", "unit": "celsius"}}' in expected
    assert grammar["format"]["type"] == "triggered_tags"


def _with_template(tok, template):
    import copy

    tok = copy.copy(tok)
    tok.chat_templates = dict(tok.chat_templates)  # the session's tokenizer keeps its own
    tok.chat_template = template
    return tok


def test_plain_chatml_gets_the_documented_format(tiny_tokenizer):
    ids, grammar = tool_prompt(tiny_tokenizer, CONVERSATION, TOOLS, "required")
    text = tiny_tokenizer.decode(ids, skip_special_tokens=False)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou are terse.\n\n# Tools")
    assert json.dumps(WEATHER) in system and "<tool_call>" in system
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisbon", '
            '"unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "add"') in text
    # both results in one user turn, in order
    assert ("<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response>\n<tool_response>\n5\n"
            "</tool_response><|im_end|>") in text
    assert text.endswith("<|im_start|>assistant\n")
    assert grammar["format"]["type"] == "tags_with_separator" and grammar["format"]["at_least_one"]


# ----------------------------------------------------------------------------- the grammar
@pytest.fixture(scope="module")
def tiny_llm(tiny_dir):
    import llmkit

    return llmkit.load(tiny_dir)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_a_random_model_forced_to_call_always_writes_valid_arguments(tiny_llm, choice):
    """The weakest model there is (random weights) samples 12 answers under the grammar: every
    one is a call whose arguments parse and validate against its function's schema. (The tools'
    description outgrows the tiny context: the prompt keeps its last tokens.)"""
    jsonschema = peer("jsonschema")
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    messages = [{"role": "user", "content": "What is 2 plus 3?"}]
    for seed in range(12):
        reply = tiny_llm.chat(messages, tools=TOOLS, tool_choice=choice, temperature=1.0, seed=seed,
                              max_new_tokens=128, parallel_tool_calls=False, truncate_prompt=True)
        assert reply.finish_reason == "tool_calls" and len(reply.tool_calls) == 1, reply
        call = reply.tool_calls[0]
        if isinstance(choice, dict):
            assert call.name == "add"
        jsonschema.validate(call.parsed_arguments(), schemas[call.name])


def test_none_forbids_calls_and_auto_streams_the_same_reply(tiny_llm):
    messages = [{"role": "user", "content": "<tool_call> hello"}]
    for seed in range(4):
        reply = tiny_llm.chat(messages, tools=TOOLS, tool_choice="none", temperature=1.0, seed=seed, max_new_tokens=24,
                              truncate_prompt=True)
        assert reply.tool_calls == [] and "<tool_call>" not in reply.content
    whole = tiny_llm.chat(messages, tools=[ADD], tool_choice="required", temperature=0, max_new_tokens=40,
                           truncate_prompt=True)
    events = list(tiny_llm.chat(messages, tools=[ADD], tool_choice="required", temperature=0, max_new_tokens=40,
                                stream=True, truncate_prompt=True))
    assert isinstance(events[-1], Finish) and events[-1].reason == whole.finish_reason
    assert any(isinstance(e, ArgumentsDelta) for e in events)
    streamed = reply_from_events(events)
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [(c.name, c.arguments) for c in whole.tool_calls]


def test_tool_events_read_finish_from_timings():
    class T:
        finish_reason = "length"

    events = list(tool_events(iter(['<tool_call>\n{"name": "f", "arguments": {"x"']), T()))
    assert events[0] == CallStart(0, events[0].id, "f") and events[-1] == Finish("length")


def test_tools_refuse_response_format_and_encoder_decoders(tiny_llm, tiny_dirs):
    import llmkit

    with pytest.raises(ToolCallError, match="response_format cannot be combined with tools"):
        tiny_llm.chat([{"role": "user", "content": "hi"}], tools=TOOLS, response_format={"type": "json_object"})
    t5 = llmkit.load(tiny_dirs["tiny-t5"])
    with pytest.raises(ToolCallError, match="encoder-decoder"):
        t5.chat([{"role": "user", "content": "hi"}], tools=TOOLS)


def _accepts(response_format: dict, text: str) -> bool:
    xgr = peer("xgrammar")
    grammar = xgr.Grammar.from_structural_tag(json.dumps(response_format))
    return xgr.testing._is_grammar_accept_string(grammar, text)


def test_the_grammars_accept_exactly_what_each_choice_allows():
    specs = tool_specs(TOOLS)
    call = call_text("add", {"a": 2, "b": 3})
    bad_args = call_text("add", {"a": 2, "b": 300})  # maximum 99
    other = call_text("get_weather", {"city": "Lisbon", "unit": "celsius"})
    none = tool_prompt_grammar("none", specs)
    assert _accepts(none, "just text") and not _accepts(none, "text " + call)
    auto = tool_prompt_grammar("auto", specs)
    assert _accepts(auto, "text") and _accepts(auto, "Sure.\n" + call) and not _accepts(auto, bad_args)
    required = tool_prompt_grammar("required", specs)
    assert not _accepts(required, "text") and _accepts(required, call + "\n" + other)
    assert not _accepts(tool_prompt_grammar("required", specs, parallel=False), call + "\n" + other)
    named = tool_prompt_grammar({"type": "function", "function": {"name": "add"}}, specs)
    assert _accepts(named, call) and not _accepts(named, other) and not _accepts(named, call + "\n" + call)


def tool_prompt_grammar(choice, specs, parallel=True):
    from llmkit.infer.tool_calls import tool_grammar

    mode, functions = tool_mode(choice, specs)
    return tool_grammar(mode, functions, parallel)


def test_a_conversation_with_calls_but_no_tools_forbids_new_calls(tiny_tokenizer):
    conversation = CONVERSATION[1:]
    ids, grammar = tool_prompt(tiny_tokenizer, conversation, None)
    assert not _accepts(grammar, call_text("add", {"a": 1, "b": 1})) and _accepts(grammar, "It is sunny.")
    text = tiny_tokenizer.decode(ids, skip_special_tokens=False)
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>' in text
    assert "# Tools" not in text  # no tools to describe


def test_chat_without_tools_renders_earlier_calls_and_answers_text(tiny_llm):
    conversation = CONVERSATION[1:]
    answer = tiny_llm.chat(conversation, temperature=0, max_new_tokens=8, truncate_prompt=True)
    assert isinstance(answer, str) and "<tool_call>" not in answer
    pieces = list(tiny_llm.chat(conversation, temperature=0, max_new_tokens=8, truncate_prompt=True, stream=True))
    assert "".join(pieces) == answer and all(isinstance(p, str) for p in pieces)


def test_response_format_refuses_what_its_grammar_cannot_enforce(tiny_llm):
    from llmkit.infer.constrained import ConstraintError

    schema = {"type": "object", "properties": {"n": {"type": "integer", "not": {"const": 3}}}}
    with pytest.raises(ConstraintError, match="properties.n.not: 'not' cannot be enforced"):
        tiny_llm.generate("x", max_new_tokens=4, response_format={"type": "json_schema",
                                                                  "json_schema": {"name": "n", "schema": schema}})
