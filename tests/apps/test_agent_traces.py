"""Agent traces written by code: the ReAct turns parse back to the calculator call and the gold
answer, the PAL programs print the gold answer in the sandbox, no held-out question of any task is
used, and the file is a chat dataset the fine-tuning reader takes (`llmkit agent-traces` writes it)."""

from __future__ import annotations

import json

import pytest

from llmkit.apps.agent_traces import (PROGRAMS, THOUGHTS, TraceError, agent_traces, check_pal, parse_question,
                                      write_traces)
from llmkit.apps.agents import ReActAgent
from llmkit.apps.pal import FENCE, extract_program, pal_messages
from llmkit.apps.prompting import question_text
from llmkit.apps.react_format import parse_react
from llmkit.apps.toolbox import builtin_tools
from llmkit.data.instruct import read_instructions
from llmkit.data.tasks import held_out_splits, load_task

TASKS = ("arith", "arith-small")


@pytest.fixture(scope="module")
def sample():
    """40 questions of each task, both kinds."""
    return agent_traces(TASKS, n=40, seed=3)


def test_react_turns_parse_back_to_the_call_and_the_gold_answer(sample):
    tools = builtin_tools("calculator")
    react = [r for r in sample if r["meta"]["kind"] == "react"]
    assert len(react) >= 70 and {r["meta"]["task"] for r in react} == set(TASKS)
    for r in react:
        m, meta = r["messages"], r["meta"]
        assert [x["role"] for x in m] == ["system", "user", "assistant", "user", "assistant"]
        # the prompt is exactly the agent's: the same system message and question turn
        assert m[:2] == ReActAgent(None, tools).messages(meta["question"])
        call = parse_react(m[2]["content"])
        assert call.error is None and call.action == "calculator" and call.answer is None
        expression = json.loads(call.action_input)["expression"]
        a, op, b = parse_question(meta["question"])
        assert expression == f"{a} {'*' if op == 'x' else op} {b}" and "x" not in expression
        assert m[3]["content"] == f"Observation: {meta['answer']}"  # the calculator's real result
        final = parse_react(m[4]["content"])
        assert final.answer == meta["answer"] and final.action is None
    gold = {(t, ex.id): ex.answer for t in TASKS for ex in load_task(t, "train")}
    assert all(r["meta"]["answer"] == gold[(r["meta"]["task"], r["meta"]["id"])] for r in sample)
    # the wording varies (seeded), so the model learns the format rather than one sentence
    thoughts = {parse_react(r["messages"][2]["content"]).thought.split()[0] for r in react}
    assert len(thoughts) >= 3


def test_pal_records_are_the_runners_conversation_and_their_programs_print_the_gold_answer(sample):
    pal = [r for r in sample if r["meta"]["kind"] == "pal"]
    assert len(pal) == len(sample) // 2
    for r in pal:
        reply = r["messages"][-1]["content"]
        # inference prompts with the opening fence and stops at the closing one: the turn is exactly that
        assert reply.startswith(FENCE) and reply.endswith("\n```") and reply.count("```") == 2
        program = extract_program(reply)
        assert r["messages"] == pal_messages(r["meta"]["question"], program)
    assert len({extract_program(r["messages"][-1]["content"]).split("=")[0] for r in pal}) >= 3
    assert check_pal(sample, k=4, seed=1) == []  # run in the sandbox
    broken = [dict(r, meta=dict(r["meta"], answer="0")) for r in pal[:1]]
    assert check_pal(broken, k=1) and "gold answer is '0'" in check_pal(broken, k=1)[0]


def test_only_train_questions_and_none_that_any_task_holds_out():
    records = agent_traces(TASKS, kinds=("pal",))  # every train question (pal: no tool runs, fast)
    questions = [r["meta"]["question"] for r in records]
    assert len(questions) == len(set(questions)) > 2000
    held = {question_text(ex) for t in TASKS for s in held_out_splits(t) for ex in load_task(t, s)}
    assert not set(questions) & held
    train_ids = {ex.id for t in TASKS for ex in load_task(t, "train")}
    assert all(r["meta"]["id"] in train_ids for r in records)
    # arith-small's train split shares questions with arith's test split: those are left out
    small_train = {question_text(ex) for ex in load_task("arith-small", "train")}
    assert small_train & held and len([r for r in records if r["meta"]["task"] == "arith-small"]) < len(small_train)
    with pytest.raises(ValueError, match="split='train'"):
        agent_traces(TASKS, split="test")


def test_seeded_and_refusals():
    assert agent_traces(("arith-small",), n=5, seed=1) == agent_traces(("arith-small",), n=5, seed=1)
    with pytest.raises(ValueError, match="kinds: 'cot'"):
        agent_traces(kinds=("react", "cot"))
    with pytest.raises(ValueError, match="no calculator"):
        agent_traces(("arith-small",), n=2, tools="datetime")
    with pytest.raises(TraceError, match="What is A OP B"):
        parse_question("What is the capital of France?")
    assert len(THOUGHTS) > 1 and len(PROGRAMS) > 1


def test_the_file_is_a_finetuning_dataset_and_the_cli_writes_it(sample, tmp_path, monkeypatch, capsys):
    from llmkit.cli import main as cli
    from llmkit.cli import trace_commands

    path = tmp_path / "t.jsonl"
    assert write_traces(path, sample) == len(sample)
    conversations, bad = read_instructions(path)  # the reader `llmkit finetune --data` uses; meta is ignored
    assert not bad and conversations == [r["messages"] for r in sample]

    if "agent-traces" not in cli.VERBS:  # until main.py registers the verb
        monkeypatch.setitem(cli.VERBS, "agent-traces", (trace_commands.add_agent_traces_args,
                                                        trace_commands.run_agent_traces, "write agent traces"))
    out = tmp_path / "cli.jsonl"
    assert cli.main(["agent-traces", "--tasks", "arith-small", "--kinds", "react,pal", "--n", "6", "--check", "2",
                     "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and {r["meta"]["kind"] for r in rows} == {"react", "pal"}
    assert "wrote 12 traces" in capsys.readouterr().out
    assert cli.main(["agent-traces", "--kinds", "cot", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "kinds: 'cot'" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
