"""guarded() against real HTTP faults: the loopback FaultServer scripts 429s, 5xx, hangs, dropped
streams and malformed JSON; waits are recorded through an injected sleep, not slept."""

from __future__ import annotations

import time

import pytest

from llmkit.apps.production import AllAttemptsFailed, CircuitBreaker, Fault, FaultServer, StreamInterrupted, guarded
from llmkit.infer.remote import RemoteLLM
from tests.apps.scripted import closed_port

ASK = [{"role": "user", "content": "what is two plus two"}]
ANSWER = "echo: what is two plus two"


@pytest.fixture
def server():
    with FaultServer() as s:
        yield s


def remote(server: FaultServer, **kw) -> RemoteLLM:
    return RemoteLLM(server.url, model=server.model, **kw)


def posts(server: FaultServer) -> int:
    return len(server.requests)


def test_429_with_retry_after_is_waited_then_answered_once(server):
    server.push("429:1.5", "429:0.25")
    slept: list[float] = []
    inner = remote(server, retries=5)
    llm = guarded(inner, retries=3, sleep=slept.append)
    assert llm.chat(ASK, temperature=0) == ANSWER
    assert slept == [1.5, 0.25]  # the server's Retry-After, exactly (no jitter on it)
    assert posts(server) == 3  # RemoteLLM's own retries are off: the wrapper alone retries
    assert llm.endpoints[0].llm.retries == 0 and inner.retries == 5  # on a copy: the caller's object is untouched


def test_5xx_backs_off_exponentially_with_jitter(server):
    server.push("500", "503", "ok")
    slept: list[float] = []
    llm = guarded(remote(server), retries=2, backoff=0.5, jitter=0.2, sleep=slept.append, rand=lambda: 1.0)
    assert llm.generate("two plus two", temperature=0) == "echo: two plus two"
    assert slept == pytest.approx([0.6, 1.2])  # 0.5 × 2^k, +20% jitter at rand()=1
    server.push("500", "500", "500")
    with pytest.raises(AllAttemptsFailed, match=r"3 attempts, last: .*answered 500"):
        llm.generate("x", temperature=0)


def test_a_hang_times_out_and_the_fallback_answers_without_retrying_the_hung_server(server):
    server.push("hang:5")
    with FaultServer(reply=lambda p: "backup: " + p) as backup:
        llm = guarded(remote(server), fallbacks=[remote(backup)], timeout=0.3, sleep=lambda s: None)
        start = time.perf_counter()
        assert llm.generate("hello", temperature=0) == "backup: hello"
        assert time.perf_counter() - start < 3
        assert posts(server) == 1 and posts(backup) == 1  # a timeout is not sent again (the server may be working)


def test_a_stream_dropped_after_its_first_token_raises_and_repeats_nothing(server):
    server.push("drop:2")
    llm = guarded(remote(server), retries=3, sleep=lambda s: None)
    got: list[str] = []
    with pytest.raises(StreamInterrupted, match=r"broke off after 10 characters \(2 deltas\).*without \[DONE\]") as e:
        for delta in llm.chat(ASK, stream=True, temperature=0):
            got.append(delta)
    assert got == ["echo:", " what"] and e.value.partial == "echo: what"
    assert posts(server) == 1  # never retried once text was out: no duplicate, no splice


def test_a_stream_dropped_before_its_first_token_is_retried_whole(server):
    server.push("drop:0", "503")
    llm = guarded(remote(server), retries=2, sleep=lambda s: None)
    deltas = list(llm.stream("one two three", temperature=0))
    assert "".join(deltas) == "echo: one two three" and len(deltas) == 4
    assert posts(server) == 3


def test_malformed_json_is_a_clear_error_never_an_answer(server):
    server.push("malformed")
    llm = guarded(remote(server), retries=2, sleep=lambda s: None)
    with pytest.raises(AllAttemptsFailed, match=r"1 attempt, last: .*/v1/chat/completions did not answer JSON"):
        llm.chat(ASK, temperature=0)
    assert posts(server) == 1  # asking again would get the same
    server.push("malformed")  # a stream whose second chunk is not JSON: the first was yielded
    with pytest.raises(StreamInterrupted, match="not JSON after 1 chunks"):
        list(llm.chat(ASK, stream=True, temperature=0))


def test_a_down_endpoint_names_the_url_and_the_attempts():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    slept: list[float] = []
    llm = guarded(RemoteLLM(url, model="m"), retries=2, sleep=slept.append, rand=lambda: 0.5)
    with pytest.raises(AllAttemptsFailed, match=rf"{url} \(model m\): 3 attempts, last: cannot reach "
                                                rf"{url}/completions"):
        llm.generate("x", temperature=0)
    assert slept == [0.5, 1.0]


def test_the_fallback_chain_is_tried_in_order(server):
    with FaultServer(reply=lambda p: "second") as second, FaultServer(reply=lambda p: "third") as third:
        server.push("500")
        second.push("401")  # not worth retrying there: straight to the next model
        llm = guarded(remote(server), fallbacks=[remote(second), remote(third)], retries=0)
        assert llm.generate("x", temperature=0) == "third"
        assert (posts(server), posts(second), posts(third)) == (1, 1, 1)
        assert llm.generate("x", temperature=0) == "echo: x"  # the first model is back: first again


def test_retry_after_longer_than_max_wait_goes_to_the_fallback(server):
    server.push("429:120")
    with FaultServer(reply=lambda p: "backup") as backup:
        slept: list[float] = []
        llm = guarded(remote(server), fallbacks=[remote(backup)], retries=3, max_wait=10, sleep=slept.append)
        assert llm.generate("x", temperature=0) == "backup" and slept == [] and posts(server) == 1


def test_the_circuit_breaker_opens_half_opens_and_closes(server):
    now = [0.0]
    with FaultServer(reply=lambda p: "backup") as backup:
        llm = guarded(remote(server), fallbacks=[remote(backup)], retries=1, breaker_failures=2, breaker_cooldown=10,
                      clock=lambda: now[0], sleep=lambda s: None)
        server.push("500", "500")
        assert llm.generate("x", temperature=0) == "backup"  # two failures in a row: open
        name = llm.endpoints[0].name
        assert llm.stats()["breakers"][name] == "open" and posts(server) == 2
        assert llm.generate("x", temperature=0) == "backup" and posts(server) == 2  # skipped while open
        now[0] = 10.0
        assert llm.stats()["breakers"][name] == "half-open"
        server.push("500")
        assert llm.generate("x", temperature=0) == "backup" and posts(server) == 3  # one trial, failed: open again
        assert llm.stats()["breakers"][name] == "open"
        now[0] = 20.0
        assert llm.generate("x", temperature=0) == "echo: x" and posts(server) == 4  # trial succeeds: closed
        assert llm.stats()["breakers"][name] == "closed"
        down = guarded(remote(server), retries=0, breaker_failures=1, clock=lambda: now[0])
        server.push("503")
        with pytest.raises(AllAttemptsFailed):
            down.generate("x", temperature=0)
        with pytest.raises(AllAttemptsFailed, match=r"skipped: circuit open after 1 failures in a row"):
            down.generate("x", temperature=0)


def test_the_breaker_lets_one_trial_through_when_half_open():
    now = [0.0]
    b = CircuitBreaker(failures=1, cooldown=5, clock=lambda: now[0])
    b.failure()
    assert not b.allow() and b.retry_in() == 5
    now[0] = 5
    assert b.allow() and not b.allow()  # the one trial
    b.success()
    assert b.state == "closed" and b.allow()
    with pytest.raises(ValueError, match="breaker_failures=0"):
        CircuitBreaker(failures=0)


def test_fault_specs_are_parsed_and_bad_ones_named():
    assert Fault.parse("429:2") == Fault("status", 429, 2.0)
    assert Fault.parse("hang:5@1") == Fault("hang", seconds=5.0, after_chunks=1)
    assert Fault.parse("drop:3").after_chunks == 3
    with pytest.raises(ValueError, match="fault 'boom'"):
        Fault.parse("boom")


class Interrupted:
    """Fails with a reset connection, or is interrupted (Ctrl-C), or answers, as `mode` says."""

    name = "interrupted"
    mode = "fail"

    def chat(self, messages, gen=None, stream=False, timings=None, **kwargs):
        if self.mode == "fail":
            raise ConnectionResetError("reset")
        if self.mode == "interrupt":
            raise KeyboardInterrupt
        return "ok"


def test_an_interrupted_half_open_trial_does_not_leave_the_circuit_shut_for_ever():
    now = [0.0]
    model = Interrupted()
    llm = guarded(model, retries=0, breaker_failures=1, breaker_cooldown=5, clock=lambda: now[0])
    with pytest.raises(AllAttemptsFailed):
        llm.chat(ASK)
    now[0], model.mode = 5.0, "interrupt"
    with pytest.raises(KeyboardInterrupt):  # the half-open trial never reports
        llm.chat(ASK)
    breaker = llm.endpoints[0].breaker
    assert breaker.state == "open" and breaker.retry_in() == 5  # counted as a failed trial: another cool-down
    now[0], model.mode = 10.0, "ok"
    assert llm.chat(ASK) == "ok" and breaker.state == "closed"


def test_the_fault_server_will_not_start_twice_nor_let_a_fault_that_cannot_fire_pass(server):
    with pytest.raises(RuntimeError, match="already running at http://127.0.0.1:"):
        server.start()
    with pytest.raises(ValueError, match="fault 'drop:-1'"):
        Fault.parse("drop:-1")
    short = FaultServer(["drop:9"])
    with pytest.raises(ValueError, match=r"fault drop:9 does not fit this stream of 3 chunk\(s\)"):
        with short:
            llm = guarded(remote(short), retries=0)
            with pytest.raises(AllAttemptsFailed, match="answered 500"):
                list(llm.stream("a b", temperature=0))  # "echo: a b": 3 chunks
    with FaultServer(["drop:3"]) as exact:  # after the last chunk, before the end: fires
        with pytest.raises(StreamInterrupted, match="without \\[DONE\\]"):
            list(guarded(remote(exact), retries=0).stream("a b", temperature=0))
