"""Budgets (typed errors with the figures), cost at the server's prices, the call log in the
server's request-log schema (SQLite and JSONL, text only when asked, PII masked), and guards
(rewrite, refuse, fail closed)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from llmkit.apps.production import (BudgetExceeded, Decision, FaultServer, GuardFailed, GuardRefused, guarded)
from llmkit.infer.remote import RemoteLLM
from tests.apps.production.fakes import Counting

ASK = [{"role": "user", "content": "mail me at jane.doe@example.com please"}]


def test_a_call_over_its_token_budget_is_refused_before_it_is_sent():
    inner = Counting()
    llm = guarded(inner, budget={"call_tokens": 50})
    with pytest.raises(BudgetExceeded, match=r"call tokens budget exceeded: 0 used \+ up to 70 \(estimated: the model "
                                             r"cannot count the prompt's tokens.*\) for this call > limit 50 "
                                             r"\(call_tokens\); lower max_new_tokens, shorten the prompt or raise "
                                             r"call_tokens") as e:
        llm.generate("hello", max_new_tokens=64, temperature=0)
    assert (e.value.what, e.value.limit) == ("call tokens", 50) and e.value.asked > 50
    assert inner.calls == []  # nothing was sent, nothing spent
    assert llm.generate("hello", max_new_tokens=8, temperature=0) == "answer 1"


def test_session_tokens_and_cost_are_charged_from_the_servers_usage_and_enforced(tmp_path):
    with FaultServer() as server:
        llm = guarded(RemoteLLM(server.url, model=server.model), price_prompt=2.0, price_completion=10.0,
                      budget={"session_tokens": 60, "session_cost": 1.0}, log=tmp_path / "calls.jsonl")
        llm.generate("one two three", max_new_tokens=10, temperature=0)  # usage: 3 prompt, 4 completion
        assert (llm.budget.used_tokens, llm.budget.calls) == (7, 1)
        assert llm.budget.used_cost == pytest.approx((3 * 2.0 + 4 * 10.0) / 1e6)
        row = llm.log.rows()[-1]
        assert (row["prompt_tokens"], row["completion_tokens"], row["cost"]) == (3, 4, pytest.approx(46e-6))
        with pytest.raises(BudgetExceeded, match="session tokens budget exceeded: 7 used") as e:
            llm.generate("one two three", max_new_tokens=50, temperature=0)
        assert (e.value.used, e.value.limit) == (7, 60)
        assert len(server.requests) == 1
        assert llm.log.rows()[-1]["error"].startswith("BudgetExceeded: session tokens")
    cheap = guarded(Counting(), budget={"session_cost": 1e-6}, price_completion=1.0)
    with pytest.raises(BudgetExceeded, match=r"session cost budget exceeded: \$0 used"):
        cheap.generate("x", max_new_tokens=100)


@pytest.mark.parametrize("suffix", [".sqlite", ".jsonl"])
def test_the_call_log_has_the_servers_columns_and_text_only_when_asked(tmp_path, suffix):
    from llmkit.infer.request_log import RequestLog

    quiet = guarded(Counting(), log=tmp_path / f"quiet{suffix}", session="alice", cache="exact")
    quiet.chat(ASK, temperature=0)
    quiet.chat(ASK, temperature=0)
    rows = quiet.log.rows()
    server_columns = {"time", "key", "model", "endpoint", "status", "prompt_tokens", "completion_tokens",
                      "latency_s", "cost", "prompt", "completion"}
    assert server_columns | {"cache_hit", "error"} <= set(rows[0])
    assert [(r["key"], r["model"], r["endpoint"], r["status"], r["cache_hit"]) for r in rows] == [
        ("alice", "counting", "/v1/chat/completions", 200, None),
        ("alice", "counting", "/v1/chat/completions", 200, "exact")]  # a hit names the model that made it
    assert rows[0]["prompt"] is None and rows[0]["completion"] is None  # no text unless asked
    loud = guarded(Counting(), log=tmp_path / f"loud{suffix}", log_text=True)
    loud.chat(ASK, temperature=0)
    row = loud.log.rows()[0]
    assert row["prompt"] == "user: mail me at <EMAIL> please" and row["completion"] == "answer 1"
    if suffix == ".sqlite":  # the server's own RequestLog reads (and writes) the same file
        server_log = RequestLog(tmp_path / f"loud{suffix}")
        server_log.write("bob", "m", "/v1/completions", 200, 1, 2, 0.1)
        assert [r["key"] for r in server_log.rows()] == [None, "bob"] and server_log.rows()[1]["cache_hit"] is None


def test_failed_calls_are_logged_with_their_error(tmp_path):
    from tests.apps.scripted import closed_port

    llm = guarded(RemoteLLM(f"http://127.0.0.1:{closed_port()}/v1", model="m"), retries=0, log=tmp_path / "c.sqlite")
    with pytest.raises(ConnectionError):
        llm.generate("x", temperature=0)
    row = llm.log.rows()[0]
    assert row["status"] == 0 and row["error"].startswith("AllAttemptsFailed: every model failed")


class Rewrite:
    name = "rewrite"

    def check_input(self, messages, documents=()):
        return Decision("rewrite", messages=[{**m, "content": m["content"].upper()} for m in messages])


class NoSecrets:
    name = "no-secrets"

    def check_output(self, messages, reply, documents=()):
        if "answer" in reply:
            return Decision("refuse", text="I can't share that.", reason="the reply names a secret")
        return Decision()


class Crashes:
    name = "crashes"

    def check_input(self, messages, documents=()):
        raise RuntimeError("classifier not loaded")


def test_guards_rewrite_refuse_and_fail_closed(tmp_path, caplog):
    inner = Counting()
    llm = guarded(inner, guards=[Rewrite()], log=tmp_path / "g.jsonl")
    llm.chat([{"role": "user", "content": "hi"}])
    assert inner.calls[-1] == [{"role": "user", "content": "HI"}]  # the rewritten messages were sent
    with pytest.raises(GuardRefused, match="refused by guard 'no-secrets' on the output: the reply names a secret"):
        guarded(Counting(), guards=[NoSecrets()]).chat(ASK)
    with pytest.raises(GuardRefused, match="no-secrets"):  # a stream is checked whole before any text goes out
        list(guarded(Counting(), guards=[NoSecrets()]).stream("hi"))
    crashing = guarded(inner, guards=[Crashes()], log=tmp_path / "g.jsonl")
    before = len(inner.calls)
    with caplog.at_level(logging.ERROR), pytest.raises(GuardFailed, match="guard 'crashes' on the input: the guard "
                                                                          "raised RuntimeError: classifier not loaded"):
        crashing.chat(ASK)
    assert len(inner.calls) == before  # fail closed: the model was never asked
    assert "fail closed" in caplog.text
    assert crashing.log.rows()[-1]["error"].startswith("GuardFailed: refused by guard 'crashes'")
    with pytest.raises(TypeError, match="has neither check_input"):
        guarded(inner, guards=[object()])


def test_a_refusal_can_be_the_reply_but_a_crashed_guard_never_is(tmp_path):
    inner = Counting()
    llm = guarded(inner, guards=[NoSecrets()], on_refusal="reply", cache="exact", log=tmp_path / "r.jsonl")
    assert llm.chat(ASK, temperature=0) == "I can't share that."
    assert list(llm.stream("hi", temperature=0)) == ["I can't share that."]
    assert llm.chat(ASK, temperature=0) == "I can't share that."  # the cached answer is checked again
    rows = llm.log.rows()
    assert [r["error"].split(":")[0] for r in rows] == ["GuardRefused"] * 3
    assert [r["cache_hit"] for r in rows] == [None, None, "exact"]
    with pytest.raises(GuardFailed):
        guarded(inner, guards=[Crashes()], on_refusal="reply").chat(ASK)


class Slow:
    """A model that takes its time, so calls overlap."""

    name = "slow"

    def generate(self, prompt, gen=None, **kwargs):
        time.sleep(0.3)
        if prompt == "fail":
            raise ValueError("bad prompt")
        return "x" * 40

    def chat(self, messages, gen=None, **kwargs):
        return self.generate(messages[-1]["content"])


def test_concurrent_calls_cannot_overrun_the_session_budget_and_failures_hand_back_their_reservation():
    llm = guarded(Slow(), budget={"session_tokens": 100})
    start, refused = threading.Barrier(8), []

    def one():
        start.wait()
        try:
            llm.generate("hello", max_new_tokens=50, temperature=0.7)  # worst case 6 + 50 = 56: one fits
        except BudgetExceeded as e:
            refused.append(e)

    threads = [threading.Thread(target=one) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert llm.budget.used_tokens <= 100 and llm.budget.calls == 1 and len(refused) == 7
    assert any("0 used + 56 reserved by calls in flight + up to 56" in str(e) for e in refused)
    assert llm.budget.reserved_tokens == 0  # settled to what the call used
    llm.budget.reset()
    with pytest.raises(ValueError, match="bad prompt"):
        llm.generate("fail", max_new_tokens=50)
    stream = llm.stream("never read", max_new_tokens=50)
    assert llm.budget.reserved_tokens > 0
    del stream  # a stream never read hands its reservation back
    assert (llm.budget.reserved_tokens, llm.budget.used_tokens) == (0, 0)


class Says:
    name = "says"

    def generate(self, prompt, gen=None, **kwargs):
        return "secret answer"

    chat = generate


class NoSecret:
    name = "no-secret"

    def check_output(self, messages, reply, documents=()):
        return Decision("refuse", text="I can't", reason="a secret") if "secret" in reply else Decision()


def test_a_reply_refused_by_an_output_guard_is_logged_with_the_tokens_and_cost_it_was_charged(tmp_path):
    llm = guarded(Says(), guards=[NoSecret()], price_prompt=1.0, price_completion=2.0, log=tmp_path / "c.jsonl")
    with pytest.raises(GuardRefused):
        llm.generate("hi", max_new_tokens=10)
    row = llm.log.rows()[-1]
    assert row["prompt_tokens"] + row["completion_tokens"] == llm.budget.used_tokens > 0
    assert row["cost"] == pytest.approx(llm.budget.used_cost) and row["cost"] > 0


class Tokenizes:
    """A model (as a RemoteLLM on llmkit serve) that counts tokens but has no local tokenizer."""

    name = "tokenizes"

    def __init__(self, works: bool = True) -> None:
        self.works, self.asked = works, 0

    def tokenize(self, text, add_special_tokens=True):
        self.asked += 1
        if not self.works:
            raise NotImplementedError("no /tokenize endpoint")
        return text.split()

    def generate(self, prompt, gen=None, **kwargs):
        return "three short words"

    chat = generate


def test_budget_admission_counts_with_the_models_tokenizer_when_it_has_one():
    question = "how many tokens does this question take"  # 7 words, 39 bytes
    llm = guarded(Tokenizes(), budget={"call_tokens": 20})
    assert llm.generate(question, max_new_tokens=10) == "three short words"  # 7 + 10 fits; 40 + 10 would not
    assert llm.budget.used_tokens == 7 + 3
    blind = guarded(Tokenizes(works=False), budget={"call_tokens": 20})
    for _ in range(2):
        with pytest.raises(BudgetExceeded, match=r"up to 50 \(estimated: .*\) for this call > limit 20 "
                                                 r"\(call_tokens\); .* raise call_tokens"):
            blind.generate(question, max_new_tokens=10)
    assert blind.endpoints[0].llm.asked == 1  # a model that cannot count is not asked again


def test_a_budget_given_whole_keeps_the_prices_and_the_name_needs_no_network():
    from llmkit.apps.production import Budget
    from tests.apps.scripted import closed_port

    shared = Budget(session_cost=1.0)
    llm = guarded(Counting(), budget=shared, price_prompt=2.0, price_completion=4.0)
    assert llm.budget is shared and (shared.price_prompt, shared.price_completion) == (2.0, 4.0)
    with pytest.raises(ValueError, match="price_prompt=3.0 but the Budget given has price_prompt=2.0"):
        guarded(Counting(), budget=shared, price_prompt=3.0)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    assert guarded(url, fallbacks=[Counting()]).name == url  # no model asked of a server that is down


def test_a_remote_models_prompt_is_counted_by_its_servers_tokenizer():
    question = [{"role": "user", "content": "how many tokens does this question take"}]  # 7 words, 39 bytes
    with FaultServer(tokenize=True) as counting, FaultServer() as blind:
        llm = guarded(RemoteLLM(counting.url, model=counting.model), budget={"call_tokens": 30})
        assert llm.chat(question, max_new_tokens=16) == "echo: how many tokens does this question take"
        with pytest.raises(BudgetExceeded, match=r"up to \d+ \(estimated: the model cannot count"):
            guarded(RemoteLLM(blind.url, model=blind.model), budget={"call_tokens": 30}).chat(question,
                                                                                            max_new_tokens=16)
        assert len(blind.requests) == 0
