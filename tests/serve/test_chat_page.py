"""The chat page at `/` in a real browser (headless Chromium driven by Playwright): it lists the
models, streams a reply into the page token by token, sends the sampling settings, and works with
an API key. The browser is Debian's `chromium` (`.ci/run` installs it); about 6 s."""

from __future__ import annotations

import shutil

import pytest

from tests.peers import missing, peer
from tests.serve.conftest import Running


@pytest.fixture(scope="module")
def browser():
    peer("playwright")
    if not shutil.which("chromium"):
        missing("no chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def keyed(served_llm, tmp_path_factory):
    from llmkit.serve import ServedModel, create_app
    from llmkit.serve.auth import Gate, load_keys

    keys = tmp_path_factory.mktemp("page") / "keys.txt"
    keys.write_text("web:sk-web-1234\n")
    with Running(create_app(ServedModel("tiny", served_llm), gate=Gate(load_keys(keys)))) as running:
        yield running


@pytest.fixture(scope="module")
def paced(tiny_dirs):
    """A server whose model takes 30 ms a forward, as a real one would: a tiny model on a fast
    machine finishes before the browser paints, and one network read would hold the whole stream."""
    import time

    import llmkit
    from llmkit.serve import ServedModel, create_app

    llm = llmkit.load(tiny_dirs["tiny-llama"])
    forward = llm.model.forward

    def slow(*args, **kwargs):
        time.sleep(0.03)
        return forward(*args, **kwargs)

    llm.model.forward = slow
    with Running(create_app(ServedModel("tiny", llm))) as running:
        yield running


def test_the_page_streams_a_reply(browser, paced, served_llm):
    server = paced
    page = browser.new_page()
    bodies, chunks = [], []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.locator("#model option").all_inner_texts() == ["tiny"]
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "24")
    page.fill("#prompt", "Write a function that adds two numbers.")
    # record the text of the reply bubble as it grows: streaming shows several partial states
    page.expose_function("seen", lambda text: chunks.append(text))
    page.evaluate("""() => new MutationObserver(() => {
        const b = document.querySelectorAll('.assistant'); if (b.length) window.seen(b[b.length - 1].textContent);
    }).observe(document.querySelector('#log'), {subtree: true, childList: true, characterData: true})""")
    page.click("#send")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('finished')", timeout=60_000)
    reply = page.locator(".assistant").last.inner_text()
    want = served_llm.chat([{"role": "user", "content": "Write a function that adds two numbers."}],
                           max_new_tokens=24, temperature=0)
    assert reply.strip() == want.strip() and reply.strip()
    assert len({c for c in chunks if c}) >= 3  # it grew in pieces: streamed, not pasted at the end
    assert bodies[-1]["temperature"] == 0 and bodies[-1]["max_tokens"] == 24 and bodies[-1]["stream"] is True
    page.close()


def test_the_page_works_with_a_key(browser, keyed, served_llm):
    page = browser.new_page()
    page.goto(keyed.url + "/")
    page.wait_for_function("document.querySelector('#status').textContent.length > 0")
    assert page.locator("#model option").count() == 0 and "API key" in page.inner_text("#status")
    page.fill("#key", "sk-web-1234")
    page.dispatch_event("#key", "change")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "4")
    page.fill("#prompt", "hi")
    page.click("#send")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('finished')", timeout=60_000)
    assert page.locator(".error").count() == 0
    want = served_llm.chat([{"role": "user", "content": "hi"}], max_new_tokens=4, temperature=0)
    reply = page.locator(".assistant").last.inner_text()
    assert want.strip() and reply.strip() == want.strip()  # the keyed request reached the model and came back
    page.close()
