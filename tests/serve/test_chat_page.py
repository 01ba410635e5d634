"""The chat page at `/` in a real browser (headless Chromium driven by Playwright): it lists the
models, streams a reply into the page token by token, sends the sampling settings, works with an
API key, renders the reply's Markdown without ever running what the model wrote, clears the last
reply's status when a new one starts, and shows the key field's hint whole. The browser is Debian's
`chromium` (`.ci/run` installs it); about 9 s."""

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


class Script:
    """The replies a stand-in API gives, in order: text (streamed in 5-character deltas, 15 ms
    apart, then the finish and the usage chunks), or ("error", message) for a 400. `hold` keeps the
    next reply back until released, so a test can look at the page while a request is in flight."""

    def __init__(self):
        import threading

        self.replies: list = []
        self.hold = threading.Event()
        self.hold.set()


@pytest.fixture(scope="module")
def scripted():
    """The chat page over a stand-in API whose replies the test writes (`Script`)."""
    import asyncio
    import json

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    from llmkit.serve import pages

    script = Script()
    app = FastAPI()
    app.include_router(pages.router)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "scripted", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat():
        await asyncio.to_thread(script.hold.wait)
        reply = script.replies.pop(0)
        if isinstance(reply, tuple):
            return JSONResponse({"error": {"message": reply[1], "type": "invalid_request_error"}}, status_code=400)

        async def events():
            for i in range(0, len(reply), 5):
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': reply[i:i + 5]}}]})}\n\n"
                await asyncio.sleep(0.015)
            yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            usage = {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with Running(app) as running:
        running.script = script
        yield running


MARKDOWN_REPLY = """Here is **the sum** of *two* numbers:

```python
def add(a, b):
    return a + b
```

- one
- two

3. third
4. fourth

Call `add(1, 2)`; see [the docs](https://example.com/add) or [this](javascript:window.pwned=3).

<img src=x onerror="window.pwned=1"> and <script>window.pwned=2</script>"""


def ask(page, text: str) -> None:
    page.fill("#prompt", text)
    page.click("#send")


def test_the_page_renders_markdown_safely_as_it_streams(browser, scripted):
    scripted.script.replies[:] = [MARKDOWN_REPLY]
    page = browser.new_page()
    states = []
    page.goto(scripted.url + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    # each state of the reply bubble as deltas arrive: (has a <pre>, has a list item, its text)
    page.expose_function("seen", lambda state: states.append(tuple(state)))
    page.evaluate("""() => new MutationObserver(() => {
        const b = document.querySelector('.assistant');
        if (b) window.seen([!!b.querySelector('pre'), !!b.querySelector('li'), b.textContent]);
    }).observe(document.querySelector('#log'), {subtree: true, childList: true, characterData: true})""")
    ask(page, "add two numbers")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('finished')")
    page.wait_for_timeout(200)  # time for an injected onerror or script to run, were either ever parsed
    bubble = page.locator(".assistant")
    assert bubble.locator("pre > code").count() == 1
    assert bubble.locator("pre > code").text_content() == "def add(a, b):\n    return a + b"
    assert bubble.locator("pre > code").get_attribute("class") == "language-python"
    assert bubble.locator("ul > li").all_text_contents() == ["one", "two"]
    assert bubble.locator("ol > li").all_text_contents() == ["third", "fourth"]
    assert bubble.locator("ol").get_attribute("start") == "3"
    assert bubble.locator("strong").all_text_contents() == ["the sum"]
    assert bubble.locator("em").all_text_contents() == ["two"]
    assert bubble.locator("p > code").all_text_contents() == ["add(1, 2)"]
    # the http(s) link is a link; the javascript: one stays text
    assert [(a.text_content(), a.get_attribute("href")) for a in bubble.locator("a").all()] == [
        ("the docs", "https://example.com/add")]
    assert "[this](javascript:window.pwned=3)" in bubble.text_content()
    # the injection attempt is text on the page, not elements, and nothing of it ran
    assert bubble.locator("img, script").count() == 0
    assert '<img src=x onerror="window.pwned=1"> and <script>window.pwned=2</script>' in bubble.inner_text()
    assert page.evaluate("window.pwned") is None
    # it streamed: the code block was a block before the reply was whole, then the list came
    assert (True, False) in {s[:2] for s in states} and len({s[2] for s in states}) >= 10
    page.close()


def test_a_new_reply_clears_the_last_ones_status(browser, scripted):
    script = scripted.script
    script.replies[:] = [("error", "the model is resting"), "Fine, thanks.", "Again."]
    page = browser.new_page()
    page.goto(scripted.url + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")

    def status():
        return page.text_content("#status")

    ask(page, "how are you?")
    page.wait_for_selector(".error")
    assert page.text_content(".error") == "the model is resting" and status() == "failed"

    def status_while_held(text: str, turns: int) -> str:
        """The status while the reply to `text` is held back by the stand-in API."""
        script.hold.clear()
        try:
            ask(page, text)
            page.wait_for_function(f"document.querySelectorAll('.user').length === {turns}")
            return status()
        finally:
            script.hold.set()

    # the next reply waits: the page shows this request's status, not the error's
    assert status_while_held("and now?", 2) == "generating…"
    page.wait_for_function("document.querySelector('#status').textContent.includes('tokens')")
    assert status() == "finished: stop · 7 prompt + 11 completion tokens"
    assert page.locator(".assistant").last.inner_text() == "Fine, thanks."

    assert status_while_held("once more", 3) == "generating…"  # and the next one drops these token counts
    page.wait_for_function("document.querySelector('#status').textContent.includes('tokens')")
    assert page.locator(".assistant").last.inner_text() == "Again."
    page.close()


def test_the_key_placeholder_fits_its_input(browser, scripted):
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(scripted.url + "/")
    # a placeholder overflows without changing scrollWidth, so measure its text in the input's font
    text, room = page.evaluate("""() => {
        const k = document.querySelector('#key'), style = getComputedStyle(k);
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = style.font;
        return [ctx.measureText(k.placeholder).width,
                k.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)];
    }""")
    assert 0 < text <= room
    page.close()


def test_settings_left_empty_take_the_models_own(browser, tiny_dirs):
    """Temperature and top p left empty stay out of the request, so the server samples as the
    model says; the placeholders show what that is. Here the model says greedy."""
    import llmkit
    from llmkit.serve import ServedModel, create_app

    llm = llmkit.load(tiny_dirs["tiny-llama"])
    llm.generation_defaults = {"temperature": 0.0, "top_p": 0.9}
    question = "Write a function that adds two numbers."
    want = llm.chat([{"role": "user", "content": question}], max_new_tokens=16, temperature=0)
    with Running(create_app(ServedModel("greedy", llm))) as server:
        page = browser.new_page()
        bodies = []
        page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        assert page.get_attribute("#temperature", "placeholder") == "0 (model's)"
        assert page.get_attribute("#top_p", "placeholder") == "0.9 (model's)"
        page.fill("#max_tokens", "16")
        page.fill("#prompt", question)
        page.click("#send")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('finished')", timeout=60_000)
        assert "temperature" not in bodies[-1] and "top_p" not in bodies[-1]
        assert page.locator(".assistant").last.inner_text().strip() == want.strip() != ""
        page.close()
