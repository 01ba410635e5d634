"""A real server on loopback (uvicorn in a thread), shared by the server tests."""

from __future__ import annotations

import threading
import time

import pytest


class Running:
    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def served_llm(tiny_dirs):
    import llmkit

    return llmkit.load(tiny_dirs["tiny-llama"])


@pytest.fixture(scope="session")
def server(served_llm):
    from llmkit.serve import ServedModel, create_app

    app = create_app([ServedModel("tiny", served_llm, engine_options={"max_batch": 8, "block_size": 8})],
                     max_body_bytes=64 * 1024, embed_precision="fp32")  # vectors compared with fp32 references
    with Running(app) as running:
        running.app = app
        yield running
