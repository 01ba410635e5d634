"""`Chain`: steps pass their parsed outputs on, a refused reply is retried with the refusal shown
to the model, every attempt is traced, and what goes wrong inside ends the run with a status."""

from __future__ import annotations

import pytest

from llmkit.apps.callbacks import Recorder, read_trace
from llmkit.apps.chains import Chain, ParseError, Step, json_value, lines, number
from llmkit.infer.remote import RemoteLLM
from tests.apps.scripted import ScriptedLLM, closed_port


def test_steps_pass_parsed_outputs_on_and_the_trace_records_them(tmp_path):
    llm = ScriptedLLM(["- sharks\n- rays\n- eels", "Three fish"])
    rec = Recorder()
    chain = Chain([Step("fish", "Name three {{ kind }}.", parser=lines),
                   Step("count", fn=lambda s: len(s["fish"])),
                   Step("title", "Title for: {{ fish | join(', ') }} ({{ count }})")],
                  llm, callbacks=[rec], trace=str(tmp_path / "trace.jsonl"))
    result = chain.run(kind="fish")
    assert result.ok and result.outputs["fish"] == ["sharks", "rays", "eels"] and result.outputs["count"] == 3
    assert result.outputs["title"] == "Three fish"
    assert llm.calls[1][0][-1]["content"] == "Title for: sharks, rays, eels (3)"
    assert [e.kind for e in rec.events] == ["model", "step", "step", "model", "step"]
    assert [(a.step, a.attempt, a.error) for a in result.trace] == [("fish", 1, None), ("count", 1, None),
                                                                      ("title", 1, None)]
    written = read_trace(tmp_path / "trace.jsonl")
    assert [e.kind for e in written] == [e.kind for e in rec.events] and len({e.run for e in written}) == 1


def test_a_refused_reply_is_retried_with_the_refusal_shown():
    llm = ScriptedLLM(["no idea", "It is 42."])
    result = Chain([Step("n", "How many?", parser=number, retries=2)], llm).run()
    assert result.ok and result.outputs["n"] == 42
    retry = llm.calls[1][0]
    assert retry[-2] == {"role": "assistant", "content": "no idea"}
    assert "holds no number" in retry[-1]["content"]
    assert [(a.attempt, a.error is None) for a in result.trace] == [(1, False), (2, True)]


def test_failures_end_the_run_with_a_status_not_an_exception():
    # a parser that never accepts: the retries run out
    llm = ScriptedLLM(["x", "y"])
    result = Chain([Step("n", "How many?", parser=number, retries=1), Step("after", fn=lambda s: 1)], llm).run()
    assert result.status == "failed" and result.failed_step == "n" and "after 2 attempts" in result.error
    assert "after" not in result.outputs and len(llm.calls) == 2
    # a missing template variable names it, and no model is asked
    llm = ScriptedLLM([])
    result = Chain([Step("a", "Say {{ word }}")], llm).run(wrod="hi")
    assert result.status == "failed" and "missing variable 'word'" in result.error and llm.calls == []
    # a model endpoint that is down
    down = RemoteLLM(f"http://127.0.0.1:{closed_port()}/v1", timeout=2)
    result = Chain([Step("a", "Say hi")], down).run()
    assert result.status == "failed" and result.error.startswith("model call failed")
    # a function step that raises
    result = Chain([Step("f", fn=lambda s: 1 / 0)]).run()
    assert result.status == "failed" and "ZeroDivisionError" in result.error


def test_json_parser_validates_and_chains_check_their_shape():
    parse = json_value({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    assert parse('Sure: {"n": 3}') == {"n": 3}
    with pytest.raises(ParseError, match="does not match the schema"):
        parse('{"n": "three"}')
    with pytest.raises(ParseError, match="no JSON"):
        parse("three")
    with pytest.raises(ValueError, match="same output 'a'"):
        Chain([Step("a", fn=lambda s: 1), Step("b", fn=lambda s: 2, output="a")])
    with pytest.raises(ValueError, match="neither it nor the chain has one"):
        Chain([Step("a", "hi")])
    with pytest.raises(ValueError, match="not both"):
        Step("a", "hi", fn=lambda s: 1)
