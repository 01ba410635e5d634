"""LLM-as-judge: verdict parsing, position swapping against a position-biased judge, win rate and
interval, garbage retried once then counted, rubric scores, a remote judge over HTTP, and the
`llmkit judge` command end to end."""

import json
import re

import pytest

from llmkit.cli.main import main
from llmkit.eval.judge import judge_models, parse_score, parse_verdict, pairwise, reply, rubric_scores
from tests.fake_openai import fake_openai


class Scripted:
    """A judge whose reply is a function of the prompt it is shown (no tokenizer: uses chat)."""

    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def chat(self, messages, gen=None, stream=False, **kwargs):
        text = messages[-1]["content"]
        self.calls.append(text)
        return self.reply(text)


def answers_in(prompt):
    first = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", prompt, re.S).group(1)
    second = re.search(r"\[Answer B\]\n(.*?)\n\nReply", prompt, re.S).group(1)
    return first, second


def prefers_correct(prompt):
    """Picks the answer that says 42; a tie when both or neither do."""
    first, second = answers_in(prompt)
    a_ok, b_ok = "42" in first, "42" in second
    return "A" if a_ok and not b_ok else "B" if b_ok and not a_ok else "tie"


def test_parse_verdict_and_score():
    assert [parse_verdict(t) for t in ["A", "[[B]]", "Tie.", "B is a better answer", "Answer B.\nA was wrong"]] == \
        ["A", "B", "tie", "B", "B"]
    assert parse_verdict("A is better than B") is None  # names both
    assert parse_verdict("I cannot decide") is None
    assert parse_score("Score: 7/10", 1, 10) == 7 and parse_score("11", 1, 10) is None and parse_score("x", 1, 10) is None


def test_position_swapping_cancels_a_position_biased_judge():
    biased = Scripted(lambda prompt: "A")  # always prefers whatever is shown first
    prompts, a, b = ["q1", "q2", "q3"], ["x1", "x2", "x3"], ["y1", "y2", "y3"]
    swapped = pairwise(biased, prompts, a, b)
    assert (swapped.ties, swapped.wins_a, swapped.wins_b) == (3, 0, 0) and swapped.win_rate_b == 0.5
    assert len(biased.calls) == 6  # each pair judged in both orders
    one_order = pairwise(Scripted(lambda prompt: "A"), prompts, a, b, swap=False)
    assert one_order.wins_a == 3 and one_order.win_rate_b == 0.0  # the bias the swap removes


def test_win_rate_and_interval_follow_the_better_model():
    prompts = [f"What is 6 x 7? ({i})" for i in range(20)]
    a = ["42" if i < 5 else "41" for i in range(20)]  # A is right 5 times
    b = ["42" if i < 15 else "40" for i in range(20)]  # B is right 15 times, including A's 5
    result = pairwise(Scripted(prefers_correct), prompts, a, b)
    assert (result.wins_b, result.wins_a, result.ties, result.invalid) == (10, 0, 10, 0)
    assert result.win_rate_b == pytest.approx((10 + 0.5 * 10) / 20)
    lo, hi = result.ci
    assert 0.5 < lo < result.win_rate_b < hi <= 1.0


def test_garbage_is_retried_once_then_counted():
    replies = iter(["blah", "B"] + ["???"] * 100)  # first order: garbage then a verdict; then garbage only
    judge = Scripted(lambda prompt: next(replies))
    result = pairwise(judge, ["q"] * 2, ["a1", "a2"], ["b1", "b2"])
    first = result.judgments[0]
    assert first.retries == 2 and first.verdicts == ["b", None] and first.winner is None
    assert result.invalid == 2 and result.win_rate_b != result.win_rate_b  # nan: nothing valid
    assert "must be exactly one of" in judge.calls[1]  # the retry carries a reminder


def test_rubric_scores():
    judge = Scripted(lambda prompt: "9" if "[Answer]\n42" in prompt else "nonsense")
    r = rubric_scores(judge, ["q", "q", "q"], ["42", "41", "42"])
    assert r.scores == [9, None, 9] and r.mean == 9 and r.invalid == 1 and len(r.replies[1]) == 2


def test_remote_judge_over_http_gives_the_same_verdicts():
    prompts, a, b = ["p1", "p2", "p3"], ["42", "1", "42"], ["0", "42", "42"]
    local = pairwise(Scripted(prefers_correct), prompts, a, b)
    with fake_openai(prefers_correct) as server:
        import llmkit

        remote = pairwise(llmkit.load(server["url"], api_key="sk-test"), prompts, a, b)
        assert all(req["temperature"] == 0 for req in server["requests"])
    assert [j.winner for j in remote.judgments] == [j.winner for j in local.judgments] == ["a", "b", "tie"]


def test_judge_command_end_to_end(tiny_dirs, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Say something."}\n{"messages": [{"role": "user", "content": "Hi"}]}\n')
    with fake_openai(lambda prompt: "B") as server:  # a judge that always prefers the second answer shown
        code = main(["judge", "--a", str(tiny_dirs["tiny-llama"]), "--b", str(tiny_dirs["tiny-gpt2"]),
                     "--prompts", str(prompts), "--judge", server["url"], "--api-key", "sk-test",
                     "--max-new-tokens", "8", "--out", str(tmp_path / "j")])
    assert code == 0
    out = capsys.readouterr().out
    assert "win rate of B: 0.500" in out and "ties 2" in out  # position bias cancelled by the swap
    summary = json.loads((tmp_path / "j" / "summary.json").read_text())
    assert summary["ties"] == 2 and summary["swap"] is True
    assert len((tmp_path / "j" / "judgments.jsonl").read_text().splitlines()) == 2


def test_judge_command_names_bad_prompt_lines(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    assert main(["judge", "--a", "x", "--b", "y", "--prompts", str(prompts), "--judge", "z"]) == 2
    assert "line 2: expected a 'prompt' string" in capsys.readouterr().err


def test_judge_models_pairs_each_prompt_with_both_models_own_answers(tiny_dirs, tmp_path):
    """The library call behind `llmkit judge`: pair i holds prompt i and each model's greedy answer to
    it, the judge is asked in both orders, and a rubric scores both sides."""
    import llmkit

    conversations = [[{"role": "user", "content": "Say something."}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say something."}) + "\n" + json.dumps({"messages": conversations[1]}) + "\n")

    def judge(text):
        return "7" if "rate the answer" in text else "B"

    with fake_openai(judge) as server:
        run = judge_models(str(tiny_dirs["tiny-llama"]), str(tiny_dirs["tiny-gpt2"]), prompts, server["url"],
                           api_key="sk-test", max_new_tokens=8, rubric="short answers score high")
        asked = [r["messages"][-1]["content"] for r in server["requests"]]
    wanted = {side: [llmkit.load(tiny_dirs[name]).chat(c, max_new_tokens=8, temperature=0) for c in conversations]
              for side, name in (("a", "tiny-llama"), ("b", "tiny-gpt2"))}
    assert wanted["a"] != wanted["b"]  # so a mix-up of the sides would show
    assert [j.a for j in run.result.judgments] == wanted["a"] and [j.b for j in run.result.judgments] == wanted["b"]
    assert [j.prompt for j in run.result.judgments] == ["Say something.", "Hi"]
    assert len(asked) == 2 * 2 + 2 * 2  # two orders per pair, one rubric score per answer
    assert sum("short answers score high" in t for t in asked) == 4
    summary = run.summary()
    assert (summary["ties"], summary["wins_b"], summary["swap"]) == (2, 0, True)  # "always B" cancels out
    assert summary["rubric_a"]["scores"] == [7, 7] and summary["rubric_b"]["mean"] == 7
    assert "rubric score B: 7.00" in run.format()


def test_a_base_model_answers_the_last_turn_as_plain_text():
    class Base:  # a tokenizer without chat templates: no chat, plain completion
        tokenizer = type("T", (), {"chat_templates": {}})()

        def generate(self, text, **kwargs):
            self.seen = (text, kwargs)
            return " done"

    base = Base()
    assert reply(base, [{"role": "user", "content": "first"}, {"role": "user", "content": "last"}], 5) == " done"
    assert base.seen == ("last", {"max_new_tokens": 5, "temperature": 0, "truncate_prompt": True})
