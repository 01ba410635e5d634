"""ReAct agents: the text format (rendering and parsing, round trips), the loop's control flow with a
scripted model (tool calls, parse failures, step limit, token budget, loops, failing tools, a server
that is down, native function calling, the JSONL trace), and the real SmolLM2 in native mode,
locally and through `llmkit serve`, taking the same steps."""

from __future__ import annotations

import json

import pytest

from llmkit.apps import Tool, builtin_tools
from llmkit.apps.agents import AgentResult, ReActAgent
from llmkit.apps.callbacks import Recorder, read_trace
from llmkit.apps.react_format import (Step, action_arguments, native_transcript, parse_react, react_system,
                                      react_transcript, render_step)
from llmkit.infer.tool_calls import ChatReply, ToolCall
from tests.apps.scripted import ScriptedLLM, closed_port, smol_llm

DAYS = "How many days are there between 2024-02-03 and 2024-11-23?"


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def flaky(query: str) -> str:
    """A search that is always down.

    Args:
        query: what to look for
    """
    raise TimeoutError("the search service did not answer")


CALC = builtin_tools("calculator")[0]
MUL = Tool.from_function(multiply)
TOOLS = [CALC, MUL]


def act(tool: str, arguments: str, thought: str = "I should call a tool.") -> str:
    return f"Thought: {thought}\nAction: {tool}\nAction Input: {arguments}"


# ----------------------------------------------------------------------------- the text format
@pytest.mark.parametrize("text, thought, action, raw, answer", [
    ('Thought: compute it\nAction: calculator\nAction Input: {"expression": "2 + 2"}', "compute it", "calculator",
     '{"expression": "2 + 2"}', None),
    ('I will multiply.\n  action : `multiply`\nACTION INPUT: {"a": 3, "b": 4}\nObservation: 12', "I will multiply.",
     "multiply", '{"a": 3, "b": 4}', None),
    ("Thought: I now know the final answer\nFinal Answer: 294 days\nand some more", "I now know the final answer",
     None, None, "294 days\nand some more"),
    ("Final Answer: 7\nAction: calculator\nAction Input: 1", "", None, None, "7\nAction: calculator\nAction Input: 1"),
    ('Thought: t\nAction: calculator\nAction Input:\n```json\n{"expression": "1"}\n```\nThought: more', "t",
     "calculator", '```json\n{"expression": "1"}\n```', None),
])
def test_parse_react_reads_actions_and_answers(text, thought, action, raw, answer):
    parsed = parse_react(text)
    assert (parsed.thought, parsed.action, parsed.action_input, parsed.answer, parsed.error) == \
        (thought, action, raw, answer, None)


def test_parse_react_says_what_is_missing():
    assert "no 'Action:' line" in parse_react("The answer is 46.").error
    assert "has no 'Action Input:'" in parse_react("Thought: x\nAction: calculator").error


@pytest.mark.parametrize("raw, expected", [
    ('{"expression": "6 * 7"} and then I will see', {"expression": "6 * 7"}),
    ("6 * 7", {"expression": "6 * 7"}),           # a bare string fills a one-parameter tool
    ('"6 * 7"', {"expression": "6 * 7"}),
    ("'6 * 7'", {"expression": "6 * 7"}),
    ("```\n{\"expression\": \"1\"}\n```", {"expression": "1"}),
])
def test_action_input_json_or_bare_string(raw, expected):
    assert action_arguments(CALC, raw) == expected


def test_a_bare_string_for_a_tool_of_two_parameters_is_left_for_the_tool_to_refuse():
    assert action_arguments(MUL, "3 and 4") == "3 and 4"
    assert MUL.run("3 and 4").startswith("error: multiply: the arguments are not JSON")


STEPS = [Step("I should multiply.", "multiply", {"a": 12, "b": 7}, "84"),
         Step("Now add 1.", "calculator", {"expression": "84 + 1"}, "85"),
         Step("I now know the final answer", answer="85")]


def test_rendered_steps_parse_back_to_the_same_fields():
    for step in STEPS:
        parsed = parse_react(render_step(step))
        tool = next((t for t in TOOLS if t.name == parsed.action), None)
        got_input = action_arguments(tool, parsed.action_input) if tool else None
        assert (parsed.thought, parsed.action, got_input, parsed.answer) == \
            (step.thought, step.action, step.action_input, step.answer)


def test_react_transcript_of_code_made_steps_is_a_training_conversation():
    messages = react_transcript("What is 12 * 7 + 1?", STEPS[:2], answer="85", tools=TOOLS)
    assert [m["role"] for m in messages] == ["system", "user"] + ["assistant", "user"] * 2 + ["assistant"]
    assert messages[1]["content"] == "Question: What is 12 * 7 + 1?"
    assert messages[3]["content"] == "Observation: 84"
    assert messages[-1]["content"] == "Thought: I now know the final answer\nFinal Answer: 85"
    assert react_transcript("q", STEPS, answer="85", tools=TOOLS) == messages[:1] + [
        {"role": "user", "content": "Question: q"}] + messages[2:]  # a final step is not added twice
    system = messages[0]["content"]
    for tool in TOOLS:  # each tool with its description and JSON parameters, the format and one example
        assert f"{tool.name}: {tool.description}" in system and json.dumps(tool.parameters) in system
    assert "Action Input: the tool's arguments as a JSON object" in system
    assert 'Example:\n\nQuestion: What is 17 * 23 + 4?\nThought:' in system and "Final Answer: 395" in system


def test_an_unknown_tool_gets_an_example_made_from_its_schema():
    system = react_system([MUL])
    assert 'Action: multiply\nAction Input: {"a": 1, "b": 1}' in system


# ----------------------------------------------------------------------------- the loop, scripted
def test_text_agent_calls_a_tool_then_answers_with_prompts_from_the_transcript():
    llm = ScriptedLLM([act("multiply", '{"a": 17, "b": 23}'),
                       "Thought: I now know the final answer\nFinal Answer: 391"])
    result = ReActAgent(llm, TOOLS).run("What is 17 * 23?")
    assert isinstance(result, AgentResult) and (result.status, result.answer, result.error) == ("answered", "391", None)
    assert [(s.action, s.action_input, s.observation) for s in result.steps] == [
        ("multiply", {"a": 17, "b": 23}, "391"), (None, None, None)]
    for i, (messages, options) in enumerate(llm.calls):  # every prompt is the transcript of the steps before it
        assert messages == react_transcript("What is 17 * 23?", result.steps[:i], tools=TOOLS)
        assert options["stop"] == ["Observation:"] and options["temperature"] == 0
    assert result.tokens == sum(s.tokens for s in result.steps) > 0 and result.seconds >= 0


def test_a_reply_that_does_not_parse_is_a_step_whose_observation_is_the_format():
    llm = ScriptedLLM(["The answer is 46.", act("calculator", "6 * 7"), "Final Answer: 42"])
    result = ReActAgent(llm, TOOLS).run("6 * 7?")
    assert result.status == "answered" and len(result.steps) == 3
    first = result.steps[0]
    assert first.action is None and first.observation.startswith("error: your reply did not follow the format")
    assert "Action: <one of: calculator, multiply>" in first.observation
    assert llm.calls[1][0][-1] == {"role": "user", "content": f"Observation: {first.observation}"}
    assert result.steps[1].observation == "42"


def test_an_unknown_tool_is_an_observation_naming_the_tools():
    llm = ScriptedLLM([act("search", '{"q": "x"}'), "Final Answer: none"])
    result = ReActAgent(llm, TOOLS).run("x?")
    assert result.steps[0].observation == "error: there is no tool named 'search': the tools are calculator, multiply"


def test_step_limit_ends_a_run_without_an_answer():
    llm = ScriptedLLM([act("calculator", f'{{"expression": "{i} + 1"}}') for i in range(5)])
    result = ReActAgent(llm, TOOLS, max_steps=3).run("count")
    assert (result.status, result.answer, len(result.steps), len(llm.calls)) == ("step_limit", None, 3, 3)
    assert "no final answer after 3 steps (max_steps=3)" in result.error


def test_a_tool_that_keeps_failing_ends_at_the_step_limit():
    llm = ScriptedLLM([act("flaky", f'{{"query": "try {i}"}}') for i in range(4)])
    result = ReActAgent(llm, [Tool.from_function(flaky)], max_steps=4).run("find it")
    assert result.status == "step_limit" and len(result.steps) == 4
    assert all(s.observation == "error: flaky raised TimeoutError: the search service did not answer"
               for s in result.steps)


def test_the_same_call_twice_in_a_row_is_a_loop_and_is_not_run_again():
    calls = []
    tool = Tool("calculator", "arithmetic", CALC.parameters, lambda expression: calls.append(expression) or "2")
    llm = ScriptedLLM([act("calculator", '{"expression": "1 + 1"}'), act("calculator", '{"expression":"1 + 1"}'),
                       "Final Answer: 2"])
    result = ReActAgent(llm, [tool]).run("1 + 1?")
    assert result.status == "loop" and result.answer is None and len(result.steps) == 2
    assert calls == ["1 + 1"] and result.steps[1].observation is None
    assert 'the same call 2 times in a row: calculator({"expression": "1 + 1"})' in result.error


def test_the_same_reply_without_an_action_twice_is_a_loop():
    """A model that ignores the format repeats itself at temperature 0: two identical unparsed
    replies end the run (a different one in between does not)."""
    llm = ScriptedLLM(["The answer is 192.", "The answer is 192.", "Final Answer: 2"])
    result = ReActAgent(llm, TOOLS, max_steps=5).run("1 + 1?")
    assert result.status == "loop" and len(result.steps) == 2 and len(llm.calls) == 2
    assert "same reply without an action 2 times" in result.error
    llm = ScriptedLLM(["The answer is 192.", "It is 2.", "The answer is 192.", "Final Answer: 2"])
    result = ReActAgent(llm, TOOLS, max_steps=5).run("1 + 1?")
    assert result.status == "answered" and result.answer == "2"


def test_token_budget_stops_before_a_step_would_pass_it():
    llm = ScriptedLLM([act("calculator", '{"expression": "1 + 1"}'), "Final Answer: 2"])
    open_run = ReActAgent(ScriptedLLM(list(llm.replies)), TOOLS, max_tokens=None).run("1 + 1?")
    first, second = open_run.steps[0].tokens, open_run.steps[1].tokens
    agent = ReActAgent(llm, TOOLS, max_tokens=first + second - 1, max_new_tokens=8)
    result = agent.run("1 + 1?")
    assert result.status == "token_budget" and result.answer is None and len(llm.calls) == 1
    assert result.tokens == first <= agent.max_tokens and f"of max_tokens={first + second - 1}" in result.error
    # with room for fewer new tokens than max_new_tokens, the step is asked for fewer
    llm = ScriptedLLM(["Final Answer: 2"])
    prompt = ReActAgent(ScriptedLLM(["Final Answer: 2"]), TOOLS).run("1 + 1?").steps[0].tokens - 3  # 3 words
    ReActAgent(llm, TOOLS, max_tokens=prompt + 20, max_new_tokens=100).run("1 + 1?")
    assert llm.calls[0][1]["max_new_tokens"] == 20


@pytest.mark.parametrize("mode", ["text", "native"])
def test_a_server_that_is_down_is_a_model_error_not_an_exception(mode):
    from llmkit.infer.remote import RemoteLLM

    down = RemoteLLM(f"http://127.0.0.1:{closed_port()}/v1", timeout=5)
    recorder = Recorder()
    result = ReActAgent(down, TOOLS, mode=mode, callbacks=[recorder]).run("1 + 1?")
    assert (result.status, result.answer, result.steps) == ("model_error", None, [])
    assert result.error.startswith("the model failed at step 1: EndpointError: cannot reach http://127.0.0.1:")


def test_a_model_that_raises_midway_keeps_the_steps_before():
    llm = ScriptedLLM([act("calculator", "1 + 1"), ConnectionError("the server went away")])
    result = ReActAgent(llm, TOOLS).run("1 + 1?")
    assert result.status == "model_error" and len(result.steps) == 1 and "the server went away" in result.error


def test_native_mode_runs_calls_and_answers_from_plain_content():
    days = builtin_tools("datetime")
    llm = ScriptedLLM([
        ChatReply(None, [ToolCall("days_between", '{"start": "2024-02-03", "end": "2024-11-23"}')], "tool_calls"),
        ChatReply("There are 294 days.", [], "stop")])
    result = ReActAgent(llm, days, mode="native", tool_choice="required").run(DAYS)
    assert (result.status, result.answer) == ("answered", "There are 294 days.")
    assert [(s.action, s.action_input, s.observation) for s in result.steps[:1]] == [
        ("days_between", {"start": "2024-02-03", "end": "2024-11-23"}, "294")]
    (first, opts1), (second, opts2) = llm.calls
    assert opts1["tools"] == days and opts1["tool_choice"] == "required" and opts2["tool_choice"] == "auto"
    assert opts1["parallel_tool_calls"] is False
    assert second == native_transcript(DAYS, result.steps[:1])
    assert second[-2]["tool_calls"][0]["function"] == {"name": "days_between",
                                                       "arguments": '{"start": "2024-02-03", "end": "2024-11-23"}'}
    assert second[-1] == {"role": "tool", "tool_call_id": "call_0", "content": "294"}


def test_native_empty_reply_is_a_step_asking_again():
    llm = ScriptedLLM([ChatReply("", [], "stop"), ChatReply("4", [], "stop")])
    result = ReActAgent(llm, TOOLS, mode="native").run("2 + 2?")
    assert result.answer == "4" and result.steps[0].observation.startswith("Call one of the tools")
    assert llm.calls[1][0][-1]["role"] == "user"


def test_trace_lines_match_the_steps(tmp_path):
    path = tmp_path / "trace" / "run.jsonl"
    recorder = Recorder()
    llm = ScriptedLLM(["no format", act("multiply", '{"a": 2, "b": 3}'), "Final Answer: 6"])
    result = ReActAgent(llm, TOOLS, callbacks=[recorder], trace=path).run("2 * 3?")
    events = read_trace(path)
    steps = [e for e in events if e.kind == "step"]
    assert [{k: v for k, v in e.data.items() if k != "index"} for e in steps] == [s.to_json() for s in result.steps]
    assert [e.data["index"] for e in steps] == [0, 1, 2]
    assert [e.kind for e in events] == ["model", "step", "model", "tool", "step", "model", "step"]
    assert len({e.run for e in events}) == 1
    assert [e.to_json() for e in recorder.events] == [e.to_json() for e in events]  # callbacks see the same


def test_bad_settings_fail_at_construction():
    with pytest.raises(ValueError, match="mode='chat' must be 'text'"):
        ReActAgent(ScriptedLLM([]), TOOLS, mode="chat")
    with pytest.raises(ValueError, match="max_steps=0 must be an integer >= 1"):
        ReActAgent(ScriptedLLM([]), TOOLS, max_steps=0)
    with pytest.raises(ValueError, match="two tools are named 'calculator'"):
        ReActAgent(ScriptedLLM([]), [CALC, CALC])


# ----------------------------------------------------------------------------- many questions at once
SCRIPTS = {
    "17 * 23?": [act("multiply", '{"a": 17, "b": 23}'), "Final Answer: 391"],
    "2?": ["Thought: easy\nFinal Answer: 2"],
    "loop?": [act("calculator", '{"expression": "1 + 1"}'), act("calculator", '{"expression": "1 + 1"}')],
    "down?": ["no format", ConnectionError("the server went away")],
    "count?": [act("calculator", f'{{"expression": "{i} + 1"}}') for i in range(3)],
    "big?": [act("calculator", "9 * 9"), "Final Answer: 81"],
}


def outcome(result: AgentResult) -> tuple:
    return (result.question, result.status, result.answer, result.error, result.tokens,
            [s.to_json() for s in result.steps])


def test_run_all_advances_in_lockstep_with_the_rules_of_run():
    from tests.apps.scripted import QuestionLLM

    questions = list(SCRIPTS)
    recorder = Recorder()
    llm = QuestionLLM(SCRIPTS)
    agent = ReActAgent(llm, TOOLS, max_steps=3, callbacks=[recorder], max_tokens=2_000)
    together = agent.run_all(questions, batch_size=4)
    alone = [ReActAgent(QuestionLLM(SCRIPTS), TOOLS, max_steps=3, max_tokens=2_000).run(q) for q in questions]
    assert [outcome(r) for r in together] == [outcome(r) for r in alone]
    assert [r.status for r in together] == ["answered", "answered", "loop", "model_error", "step_limit", "answered"]
    # round by round: every unfinished question is asked once per round, in order
    asked = [m[1]["content"].removeprefix("Question: ") for m, _ in llm.calls]
    assert asked == questions + ["17 * 23?", "loop?", "down?", "count?", "big?"] + ["count?"]
    # each question is its own run: its events in the order a single run makes them
    runs: dict[str, list[str]] = {}
    for e in recorder.events:
        runs.setdefault(e.run, []).append(e.kind)
    assert len(runs) == len(questions)
    assert list(runs.values())[0] == ["model", "tool", "step", "model", "step"]
    assert list(runs.values())[3] == ["model", "step", "error"]
    # the token budget is per question too
    tight = ReActAgent(QuestionLLM(SCRIPTS), TOOLS, max_tokens=alone[0].steps[0].tokens + 20).run_all(questions[:2])
    assert [r.status for r in tight] == ["token_budget", "answered"]


def test_run_all_on_a_real_model_equals_run_one_by_one(tiny_dir):
    """The engine's batched decoding gives each question what it gets alone at temperature 0. The
    tiny model reads 512 tokens: no tools and a short system keep two steps in its window, and the
    longest question overflows at its second step (a model error of its own, the others go on)."""
    import llmkit

    llm = llmkit.load(tiny_dir)
    agent = ReActAgent(llm, [], system="Answer.", max_steps=2, max_new_tokens=6)
    questions = ["What is 1 + 1?", "Why " * 30 + "?", "What is 2 + 3?"]
    together = agent.run_all(questions, batch_size=3)
    assert [outcome(r) for r in together] == [outcome(agent.run(q)) for q in questions]
    assert [r.status for r in together] == ["step_limit", "model_error", "step_limit"]
    assert "ContextLengthError" in together[1].error and len(together[1].steps) == 1
    first = llm.chat(agent.messages(questions[0]), max_new_tokens=6, temperature=0, stop=["Observation:"])
    assert together[0].steps[0].text == first.strip()  # the engine's reply is the plain chat's


# ----------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine two threads wait on each other (a grammar-constrained
    call took 40 s instead of 5 here), as in tests/pipelines/test_learning_claims.py."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smol(smollm2):
    return smol_llm(str(smollm2.path))


def days_agent(llm, **kwargs) -> ReActAgent:
    # a weak model left to "auto" answers from memory: it must call first; 64 tokens hold the call
    return ReActAgent(llm, builtin_tools("datetime"), mode="native", tool_choice="required", max_steps=3,
                      max_new_tokens=64, **kwargs)


@pytest.fixture(scope="module")
def local_run(smol, tmp_path_factory):
    path = tmp_path_factory.mktemp("agent") / "trace.jsonl"
    return days_agent(smol, trace=path).run(DAYS), path


def test_smollm2_native_agent_calls_days_between_with_valid_arguments(local_run):
    result, path = local_run
    assert result.status in ("answered", "step_limit", "loop"), result.error
    tools = [e for e in read_trace(path) if e.kind == "tool"]
    assert tools and tools[0].name == "days_between" and tools[0].data["ok"], tools
    days = builtin_tools("days_between")[0]
    assert days.validate(tools[0].data["arguments"]) == {"start": "2024-02-03", "end": "2024-11-23"}
    assert tools[0].data["observation"] == "294" and result.steps[0].observation == "294"


def test_smollm2_local_and_served_agents_take_the_same_steps(smol, local_run):
    import llmkit
    from llmkit.serve import ServedModel, create_app
    from tests.serve.conftest import Running

    local, _ = local_run
    assert local.steps and local.steps[0].action == "days_between"
    with Running(create_app([ServedModel("smol", smol)])) as server:
        remote = days_agent(llmkit.load(server.url + "/v1")).run(DAYS)
    fields = lambda r: [(s.thought, s.action, s.action_input, s.observation, s.answer) for s in r.steps]  # noqa: E731
    assert (remote.status, fields(remote)) == (local.status, fields(local))


def test_smollm2_text_mode_runs_through_the_chat_template_and_counts_its_tokens(smol):
    agent = ReActAgent(smol, builtin_tools("datetime"), max_steps=1, max_new_tokens=24)
    result = agent.run(DAYS)
    assert result.status in ("answered", "step_limit"), result.error
    (step,) = result.steps
    assert "Observation:" not in step.text  # generation stopped before it
    exact = smol.chat_tokens(agent.messages(DAYS)) + len(smol.tokenize(step.text, add_special_tokens=False))
    assert abs(step.tokens - exact) <= 8, (step.tokens, exact)  # contents counted exactly, template markers estimated
