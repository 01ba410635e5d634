"""A small stand-in for an OpenAI-compatible server (stdlib only), for testing clients: it answers
/v1/models, /v1/chat/completions (also streaming) and /v1/completions with a reply function,
checks the bearer key, and records every request body."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator


@contextmanager
def fake_openai(reply: Callable[[str], str], api_key: str = "sk-test", model: str = "fake") -> Iterator[dict]:
    """Yields {"url": base URL ending in /v1, "requests": [bodies]}; `reply(text) -> str` answers
    the last user message (chat) or the prompt (completions)."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {api_key}":
                self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
                return False
            return True

        def do_GET(self):
            if self._authorised() and self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})

        def do_POST(self):
            if not self._authorised():
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"path": self.path, **body})
            if self.path == "/v1/chat/completions":
                text = reply(body["messages"][-1]["content"])
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for piece in [text[i:i + 3] for i in range(0, len(text), 3)]:
                        chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                    return
                self._send(200, {"object": "chat.completion", "model": model, "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
            elif self.path == "/v1/completions":
                prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
                self._send(200, {"object": "text_completion", "model": model, "choices": [
                    {"index": i, "text": reply(p), "finish_reason": "stop"} for i, p in enumerate(prompts)]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}/v1", "requests": requests}
    finally:
        server.shutdown()
        server.server_close()
