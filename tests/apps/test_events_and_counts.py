"""What a failure leaves behind and what a run counts: a batch that raises still reports the calls
made before it and its failure; an agent that fails before any model call says so in its trace;
a ReAct run on a local model counts the tokens the engine counted; a template that reads a missing
attribute is a `PromptError`; a window memory works with a model that does not say its window."""

from __future__ import annotations

import pytest

from llmkit.apps.agents import ReActAgent
from llmkit.apps.batching import complete_chats
from llmkit.apps.callbacks import Callbacks, Recorder
from llmkit.apps.memory import BufferMemory, WindowMemory
from llmkit.apps.prompting import least_to_most
from llmkit.apps.prompts import Prompt, PromptError
from llmkit.apps.toolbox import builtin_tools
from tests.apps.scripted import closed_port


class FailsSecond:
    """A server stand-in: the second request fails."""

    name = "flaky"

    def __init__(self):
        self.calls = 0

    def chat(self, messages, stream=False, timings=None, **kw):
        self.calls += 1
        if self.calls == 2:
            raise ConnectionError("the server went away")
        return iter(["ok"]) if stream else "ok"


def test_a_batch_that_raises_still_reports_the_calls_before_it_and_its_failure():
    recorder = Recorder()
    asked = [[{"role": "user", "content": q}] for q in ("a", "b", "c")]
    with pytest.raises(ConnectionError, match="went away"):
        complete_chats(FailsSecond(), asked, callbacks=Callbacks([recorder]))
    assert [e.kind for e in recorder.events] == ["model", "error"]
    assert recorder.events[0].data["messages"] == asked[0] and recorder.events[0].data["text"] == "ok"
    assert recorder.events[1].data == {"where": "model", "error": "ConnectionError: the server went away"}


@pytest.mark.parametrize("mode", ["text", "native"])
def test_an_agent_whose_server_is_down_says_so_in_its_trace(mode):
    from llmkit.infer.remote import RemoteLLM

    down = RemoteLLM(f"http://127.0.0.1:{closed_port()}/v1", timeout=5)
    recorder = Recorder()
    result = ReActAgent(down, builtin_tools("calculator"), mode=mode, callbacks=[recorder]).run("1 + 1?")
    assert result.status == "model_error"
    errors = recorder.of("error")
    assert errors and errors[-1].data["where"] == "agent" and errors[-1].data["error"] == result.error


def test_a_react_run_on_a_local_model_counts_the_engines_tokens(tiny_dir):
    import llmkit

    llm = llmkit.load(tiny_dir)
    recorder = Recorder()
    result = ReActAgent(llm, [], system="Answer.", max_steps=2, max_new_tokens=6, callbacks=[recorder]).run("1 + 1?")
    calls = recorder.of("model")
    assert len(calls) == len(result.steps) == 2
    assert [s.tokens for s in result.steps] == [e.data["prompt_tokens"] + e.data["completion_tokens"] for e in calls]
    assert result.completion_tokens == sum(e.data["completion_tokens"] for e in calls)
    assert result.tokens == sum(s.tokens for s in result.steps)


def test_a_template_reading_a_missing_attribute_is_a_prompt_error():
    with pytest.raises(PromptError, match="user template.*'dict object' has no attribute 'name'"):
        Prompt("Hello {{ user.name }}").render(user={})
    with pytest.raises(PromptError, match="system template"):
        Prompt("{{ q }}", system="You serve {{ user.name }}.").messages(q="x", user={})


def test_a_window_memory_works_with_a_model_that_does_not_say_its_window():
    class NoWindow:  # a server whose /models gives no max_model_len
        name = "no-window"

        @property
        def context_window(self):
            raise NotImplementedError("no max_model_len")

    memory = WindowMemory(max_tokens=200)
    for i in range(10):
        memory.add({"role": "user", "content": f"question {i} " * 5})
        memory.add({"role": "assistant", "content": f"answer {i} " * 5})
    memory.add({"role": "user", "content": "now?"})
    sent = memory.context(NoWindow(), system="Be brief.")
    assert memory.last.budget == 200 and memory.last.tokens <= 200
    assert 1 < len(sent) < 22 and sent[-1] == {"role": "user", "content": "now?"}
    # a buffer memory sends everything there (the server refuses what it cannot hold)
    buffer = BufferMemory()
    for m in memory.messages:
        buffer.add(m)
    assert buffer.context(NoWindow(), system="Be brief.")[1:] == memory.messages


def test_least_to_most_with_no_questions_answers_none():
    assert least_to_most().answer_all(object(), []) == []


def test_a_tool_event_is_not_ok_when_any_line_of_the_observation_reports_a_failure():
    from llmkit.apps import Tool
    from llmkit.apps.callbacks import Callbacks, Recorder, tool_call

    def program(code: str) -> str:
        """Pretend to run a program that printed, then failed."""
        return "partial output\nerror: the program exited with status 1"

    rec = Recorder()
    observation, ok = tool_call(Tool.from_function(program), {"code": "x"}, Callbacks([rec]))
    assert not ok and rec.of("tool")[0].data["ok"] is False and observation.startswith("partial")

    def fine(code: str) -> str:
        """Pretend to run a program that worked."""
        return "4"

    assert tool_call(Tool.from_function(fine), {"code": "x"}, Callbacks([rec])) == ("4", True)
