"""A fault-injecting OpenAI-compatible server on loopback, for testing clients against real HTTP
faults (stdlib only): every POST takes the next fault of its script, then answers normally.

    with FaultServer(["429:1.5", "500", "drop:2", "ok"]) as server:
        llm = RemoteLLM(server.url, model=server.model, retries=0)
        ...                          # the 1st request gets 429 with Retry-After: 1.5, the 2nd 500, ...
        server.push("hang:5")        # more faults for later requests
        server.requests              # [(path, body), ...] as the server received them

Faults (`Fault.parse` reads the short forms):

- ``"429:S"`` / ``"503:S"``: that status with ``Retry-After: S`` (``"500"``: no header)
- ``"hang:S"``: no answer for S seconds (past the client's timeout), then the normal answer
- ``"hang:S@N"``: a stream that sends N chunks, then stalls for S seconds
- ``"drop:N"``: a stream that sends N content chunks, then closes the connection without
  ``[DONE]``; a plain answer that sends half its body and closes

A stream fault that does not fit the answer it meets (N past its last chunk: it would never fire)
is answered 500 naming the fault, and the ``with`` block raises on leaving (`check`), so a test
cannot pass by a fault that never happened.
- ``"malformed"``: 200 with a body (or a stream chunk) that is not JSON
- ``"ok"``: the normal answer

The normal answer to a prompt (the last user message, or the completion prompt) is
``reply(prompt)`` (default: ``"echo: " + prompt``), streamed a word at a time. GET ``/v1/models``
is always answered, never scripted; with ``tokenize=True`` so is llmkit serve's POST
``/v1/tokenize`` (a token a word). Written by hand because no test library speaks OpenAI's SSE
with scripted breakage.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

KINDS = ("status", "hang", "drop", "malformed", "ok")


@dataclass(frozen=True)
class Fault:
    """One scripted answer: `kind` is one of `KINDS`; `status` and `retry_after` for "status",
    `seconds` for "hang", `after_chunks` for "drop" and a stream's "hang"."""

    kind: str
    status: int = 200
    retry_after: float | None = None
    seconds: float = 0.0
    after_chunks: int = 0

    @classmethod
    def parse(cls, spec: "str | Fault") -> "Fault":
        """A `Fault` from its short form ("429:2", "500", "hang:5", "hang:5@1", "drop:1", "malformed", "ok")."""
        if isinstance(spec, Fault):
            return spec
        head, _, arg = str(spec).strip().partition(":")
        try:
            if head.isdigit():
                return cls("status", int(head), float(arg) if arg else None)
            if head == "hang":
                seconds, _, after = arg.partition("@")
                if float(seconds) >= 0 and int(after or 0) >= 0:
                    return cls("hang", seconds=float(seconds), after_chunks=int(after or 0))
            if head == "drop" and int(arg or 0) >= 0:
                return cls("drop", after_chunks=int(arg or 0))
            if head in ("malformed", "ok") and not arg:
                return cls(head)
        except ValueError:
            pass
        raise ValueError(f"fault {spec!r}: use 'STATUS[:RETRY_AFTER]' (429:2), 'hang:SECONDS[@CHUNKS]', "
                         "'drop:CHUNKS', 'malformed' or 'ok'")


def echo(prompt: str) -> str:
    """The default reply: the prompt, echoed."""
    return "echo: " + prompt


class FaultServer:
    """An OpenAI-compatible server on 127.0.0.1 (a free port) that answers ``/v1/chat/completions``
    and ``/v1/completions`` (plain and streamed) as its script of faults says; see the module doc.
    Use it as a context manager, or `start` / `stop`."""

    def __init__(self, script: Iterable[str | Fault] = (), reply: Callable[[str], str] = echo, model: str = "faulty",
                 tokenize: bool = False):
        self.reply, self.model, self.tokenize = reply, model, tokenize
        self.script: deque[Fault] = deque()
        self.requests: list[tuple[str, dict]] = []
        self.misfires: list[str] = []  # faults that could not happen as scripted (see `check`)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self.push(*script)

    def push(self, *faults: str | Fault) -> None:
        """Script the next requests (after those already scripted)."""
        with self._lock:
            self.script.extend(Fault.parse(f) for f in faults)

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT/v1``, for `RemoteLLM` or any OpenAI client."""
        if self._httpd is None:
            raise RuntimeError("the fault server is not running: call start() or use it in a with block")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> "FaultServer":
        """Listen on a free loopback port, in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError(f"the fault server is already running at {self.url}: stop() it before starting again")
        self._stopping.clear()
        self._httpd = _Quiet(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening; hanging answers end at once."""
        self._stopping.set()  # hanging handlers wake up
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if exc[0] is None:
            self.check()

    def check(self) -> None:
        """Raise if a scripted fault could not happen as written (a stream fault placed after the
        last chunk of the answer it met): such a request was answered 500, naming the fault, and a
        test must not pass by a fault that never fired. A ``with`` block calls this on leaving."""
        if self.misfires:
            raise ValueError("scripted fault(s) that could not fire: " + "; ".join(self.misfires))

    def _next(self, path: str, body: dict) -> Fault:
        with self._lock:
            self.requests.append((path, body))
            return self.script.popleft() if self.script else Fault("ok")


class _Quiet(ThreadingHTTPServer):
    """A client that left (timed out, dropped a hung request) is what these faults are for: no traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def _handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet tests
            pass

        def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            fields = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
            for k, v in fields.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if server.tokenize and self.path.rstrip("/") == "/v1/tokenize":  # llmkit serve's: a token a word here
                text = body.get("prompt") or " ".join(str(m.get("content") or "") for m in body.get("messages") or [])
                words = len(str(text).split())
                self._json(200, {"tokens": list(range(words)), "count": words})
                return
            chat = self.path.rstrip("/") == "/v1/chat/completions"
            if not chat and self.path.rstrip("/") != "/v1/completions":
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            fault = server._next(self.path, body)
            if fault.kind == "status":
                headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                self._json(fault.status, {"error": {"message": f"scripted {fault.status}"}}, headers)
                return
            if fault.kind == "hang" and not (body.get("stream") and fault.after_chunks):
                if server._stopping.wait(fault.seconds):
                    return
            prompt = _prompt(body, chat)
            text = server.reply(prompt)
            usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(_pieces(text))}
            pieces = len(_pieces(text))
            if body.get("stream") and (fault.kind in ("drop", "hang") and fault.after_chunks > pieces
                                       or fault.kind == "malformed" and pieces < 2):
                spec = {"drop": f"drop:{fault.after_chunks}", "hang": f"hang:{fault.seconds:g}@{fault.after_chunks}",
                        "malformed": "malformed (it breaks the 2nd chunk)"}[fault.kind]
                why = (f"fault {spec} does not fit this stream of {pieces} chunk(s) ({text!r}), so it would never "
                       f"fire: script a chunk index from 0 to {pieces}, or a longer prompt")
                with server._lock:
                    server.misfires.append(why)
                self._json(500, {"error": {"message": why}})
                return
            if body.get("stream"):
                self._stream(chat, text, usage, fault, bool((body.get("stream_options") or {}).get("include_usage")))
                return
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                      else {"index": 0, "text": text, "finish_reason": "stop"})
            answer = {"id": "x", "object": "chat.completion" if chat else "text_completion", "model": server.model,
                      "choices": [choice], "usage": {**usage, "total_tokens": sum(usage.values())}}
            data = json.dumps(answer).encode()
            if fault.kind == "malformed":
                data = b'{"choices": [{"message": '  # cut JSON
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2] if fault.kind == "drop" else data)
            if fault.kind == "drop":
                self._drop()

        def _stream(self, chat: bool, text: str, usage: dict, fault: Fault, include_usage: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()

            def send(obj: Any) -> None:
                raw = obj if isinstance(obj, str) else json.dumps(obj)
                self.wfile.write(f"data: {raw}\n\n".encode())
                self.wfile.flush()

            for i, piece in enumerate([*_pieces(text), None]):
                if fault.kind in ("drop", "hang") and i == fault.after_chunks:
                    if fault.kind == "drop":
                        self._drop()
                        return
                    if server._stopping.wait(fault.seconds):
                        return
                if piece is None:  # every content chunk is out
                    break
                if fault.kind == "malformed" and i == 1:
                    send('{"choices": [{"delta": ')
                    continue
                choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
                send({"object": "chat.completion.chunk" if chat else "text_completion", "choices": [choice]})
            end = {"index": 0, "delta": {}, "finish_reason": "stop"} if chat else {"index": 0, "text": "",
                                                                                   "finish_reason": "stop"}
            send({"choices": [end]})
            if include_usage:
                send({"choices": [], "usage": usage})
            send("[DONE]")

        def _drop(self) -> None:
            """Close the connection mid-answer: what was sent arrives, then the end of the stream."""
            self.wfile.flush()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.close_connection = True

    return Handler


def _prompt(body: dict, chat: bool) -> str:
    if chat:
        users = [m.get("content") or "" for m in body.get("messages") or [] if m.get("role") == "user"]
        return users[-1] if users else ""
    prompt = body.get("prompt", "")
    return prompt[0] if isinstance(prompt, list) and prompt else str(prompt)


def _pieces(text: str) -> list[str]:
    """The text a word at a time (each with its leading space), as a stream sends it."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]
