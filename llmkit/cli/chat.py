"""`llmkit chat`: a conversation in the terminal that behaves like Ollama's and llama.cpp's.

Ctrl-C stops the reply (the part already shown stays in the conversation, marked as cut);
Ctrl-C at an empty prompt says how to leave; Ctrl-D or /exit leaves. Lines are edited with
readline, with a history kept in the llmkit home across sessions. Slash commands never reach
the model. With stdin piped, each line is one message and only the replies are printed.
With ``--memory`` the conversation goes through an `llmkit.apps.memory` class (a token window, or
a window with a running summary of what fell out of it) instead of the plain fitting to the context.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .chat_memory import make_memory
from .commands import generation_config, load_llm

log = logging.getLogger(__name__)

MULTILINE = '"""'
HELP = f"""commands:
  /help                 this list
  /reset                forget the conversation (keeps the system message)
  /system TEXT          set the system message (and start over)
  /set OPTION VALUE     sampling: temperature, top_p, top_k, min_p, repetition_penalty,
                        presence_penalty, frequency_penalty, max_new_tokens, seed
  /set                  show the current settings
  /save FILE            write the conversation as one {{"messages": [...]}} JSONL row (what finetune reads)
  /load FILE            continue a conversation saved with /save
  /stats                tokens and speed of the last reply, and how much of the context is used
  /exit                 leave (also Ctrl-D, /quit, /bye)
input:
  {MULTILINE} starts a message of several lines, {MULTILINE} on its own ends it; a line ending in \\ continues
  Ctrl-C stops a reply; //text sends a message that starts with /text"""
SETTABLE = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "repetition_penalty": float,
            "presence_penalty": float, "frequency_penalty": float, "max_new_tokens": int, "seed": int}


class Style:
    """ANSI styles when writing to a terminal that wants them (not piped, no NO_COLOR)."""

    def __init__(self, stream) -> None:
        self.on = stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    def _wrap(self, code: str, text: str, prompt: bool = False) -> str:
        if not self.on:
            return text
        # readline counts a prompt's width: \001 and \002 tell it the escapes take no columns
        start, end = (f"\001\033[{code}m\002", "\001\033[0m\002") if prompt else (f"\033[{code}m", "\033[0m")
        return f"{start}{text}{end}"

    def prompt(self, text: str) -> str:
        return self._wrap("1;32", text, prompt=True)

    def reply_start(self) -> str:
        return "\033[36m" if self.on else ""

    def reply_end(self) -> str:
        return "\033[0m" if self.on else ""

    def dim(self, text: str) -> str:
        return self._wrap("2", text)


def history_file() -> Path:
    from ..models.resolve import llmkit_home

    return llmkit_home() / "chat_history"


def _readline(enabled: bool) -> Callable[[], None]:
    """Turn on line editing and the persistent history; returns what records the line just read.
    Each line is appended at once, so that a closed terminal loses nothing and two sessions do not
    overwrite each other's lines."""
    if not enabled:
        return lambda: None
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input() still works
        return lambda: None
    path = history_file()
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    recorded = readline.get_current_history_length()

    def record() -> None:
        nonlocal recorded
        now = readline.get_current_history_length()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            if now > recorded:  # the lines of the message just read (several for a """ block)
                readline.append_history_file(now - recorded, path)
        except OSError:
            pass
        recorded = now

    return record


def save_conversation(messages: list[dict[str, Any]], path: str) -> Path:
    from ..utils import atomic_path

    out = Path(path).expanduser()
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"messages": messages}, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def load_conversation(path: str) -> list[dict[str, Any]]:
    """The messages of the first row of a JSONL file in the ``{"messages": [...]}`` format."""
    from ..data.jsonl import BadRow, iter_jsonl

    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"no such file: {source}")
    for row in iter_jsonl(source):
        if isinstance(row, BadRow):
            raise ValueError(f"{source} line {row.line}: {row.reason}")
        n, obj = row
        messages = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in messages):
            raise ValueError(f"{source} line {n}: expected {{\"messages\": [{{\"role\", \"content\"}}, ...]}} "
                             "(what /save writes)")
        return messages
    raise ValueError(f"{source} holds no conversation")


def format_timings(t, load_s: float | None = None) -> str:
    """llama.cpp's timing lines in one: load, prefill and decode."""
    parts = [f"load {load_s:.2f} s"] if load_s is not None else []
    if not t.prompt_tokens and not t.generated_tokens:  # a server that sends no usage
        return " · ".join(parts + [f"reply in {t.prefill_s + t.decode_s:.2f} s (the server reported no token counts)"])
    parts.append(f"prompt {t.prompt_tokens} tokens in {t.prefill_s:.2f} s ({t.prefill_tokens_per_s:.1f} tokens/s)")
    parts.append(f"generated {t.generated_tokens} tokens in {t.prefill_s + t.decode_s:.2f} s "
                 f"(decode {t.decode_tokens_per_s:.1f} tokens/s)")
    return " · ".join(parts)


class ChatSession:
    """The conversation, the settings, and the slash commands of one `llmkit chat`."""

    def __init__(self, llm, args: argparse.Namespace, out, err, style: Style, load_s: float):
        self.llm, self.args, self.out, self.err, self.style, self.load_s = llm, args, out, err, style, load_s
        self.gen = generation_config(args, llm)
        self.system = args.system
        self.messages: list[dict[str, Any]] = self._start()
        self.sent: list[dict[str, Any]] = list(self.messages)  # what the model saw last: the part that fit
        self.dropped = 0  # how many of the oldest messages no longer fit the context
        self.last = None  # Timings of the last reply
        self.memory = make_memory(args, llm, self.gen.max_new_tokens)  # None: fit_history, as without --memory

    def _start(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _restart(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        if self.memory is not None:  # the memory decides what the next turn sends
            self.sent, self.dropped = [], 0
            self.memory.clear()
            for m in messages[1:] if messages and messages[0]["role"] == "system" else messages:
                self.memory.add(m)
            return
        self.sent = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:  # what the next turn will send of a loaded conversation (for /stats)
            self.sent = self.llm.fit_history(self.sent, self.gen.max_new_tokens) if self.sent else []
        except Exception:  # noqa: BLE001 - a count for /stats only; the next turn reports real errors
            pass
        self.dropped = len(messages) - len(self.sent)

    def note(self, text: str) -> None:
        self.err.write(self.style.dim(text) + "\n")
        self.err.flush()

    # -------------------------------------------------------------- commands
    def command(self, line: str) -> bool:
        """Run a slash command; False when it asks to leave."""
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if name in ("exit", "quit", "bye"):
            return False
        if name in ("help", "?"):
            self.out.write(HELP + "\n")
        elif name in ("reset", "clear"):
            self._restart(self._start())
            self.note("(the conversation is cleared)")
        elif name == "system":
            if not rest:
                self.note(f"(system message: {self.system!r}; /system TEXT sets it)")
                return True
            self.system = rest
            self._restart(self._start())
            self.note("(system message set; the conversation starts over)")
        elif name == "set":
            self._set(rest)
        elif name == "save":
            if not rest:
                self.note("(/save FILE: name the file)")
                return True
            try:
                self.note(f"(saved {len(self.messages)} messages to {save_conversation(self.messages, rest)})")
            except OSError as e:
                self.note(f"(cannot save to {rest}: {e.strerror or e}; the conversation is still here)")
        elif name == "load":
            if not rest:
                self.note("(/load FILE: name the file)")
                return True
            try:
                messages = load_conversation(rest)
            except (OSError, ValueError) as e:
                self.note(f"(cannot load: {e})")
                return True
            unanswered = ""
            if messages and messages[-1]["role"] == "user":  # the next message is a user turn too
                messages = messages[:-1]
                unanswered = "; its last message had no reply and is left out"
            self._restart(messages)
            self.system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
            self.note(f"(loaded {len(messages)} messages from {rest}{unanswered})")
        elif name == "stats":
            self._stats()
        else:
            self.note(f"(unknown command /{name}: /help lists the commands; //{name} sends the text to the model)")
        return True

    def _set(self, rest: str) -> None:
        if not rest:
            shown = {k: getattr(self.gen, k) for k in SETTABLE}
            self.out.write("  ".join(f"{k}={v}" for k, v in shown.items()) + "\n")
            return
        key, _, value = rest.partition(" ")
        key = key.replace("-", "_")
        if key not in SETTABLE or not value.strip():
            self.note(f"(/set OPTION VALUE, with OPTION one of: {', '.join(SETTABLE)})")
            return
        try:
            typed = SETTABLE[key](value.strip()) if not (key == "seed" and value.strip() == "none") else None
            window = self._window()
            if key == "max_new_tokens" and window and typed >= window:
                raise ValueError(f"the context holds {window} tokens: ask for fewer new ones")
            before = getattr(self.args, key)
            setattr(self.args, key, typed)  # as if given on the command line: the same layering applies
            try:
                self.gen = generation_config(self.args, self.llm)
            except ValueError:
                setattr(self.args, key, before)
                raise
        except ValueError as e:
            self.note(f"(cannot set {key}: {e})")
            return
        self.note(f"({key} = {typed})")

    def _stats(self) -> None:
        used = self._context_used()
        window = self._window()
        context = f"context {used} of {window} tokens" if used is not None and window else "context size unknown"
        if self.last is None:
            self.out.write(f"no reply yet · {context}\n")
        else:
            self.out.write(f"{format_timings(self.last, self.load_s)} · {context}\n")

    def _window(self) -> int | None:
        try:
            return self.llm.context_window
        except (NotImplementedError, ConnectionError):  # a server that does not say
            return None

    def _context_used(self) -> int | None:
        try:
            return self.llm.chat_tokens(self.sent) if self.sent else 0
        except (NotImplementedError, ConnectionError):
            return None

    # -------------------------------------------------------------- a turn
    def reply(self, text: str) -> None:
        """Send `text`, stream the reply. The whole conversation stays in `messages` (what /save
        writes); what is sent is its most recent part that fits the context. A failure (too long a
        message, a server gone) is one line, and the conversation goes on without that message."""
        from ..apps.context import ContextOverflow
        from ..infer.generate import Timings
        from ..models.transformer import ContextLengthError

        self.messages.append({"role": "user", "content": text})
        timings = Timings()
        parts: list[str] = []
        cut = False
        try:
            if self.memory is not None:
                self.memory.add({"role": "user", "content": text})
            sent, dropped = self._fit()
            if dropped > self.dropped and self.memory is None:
                self.note(f"(the conversation outgrew the {self._window()}-token context: the oldest {dropped} "
                          f"message{'s' if dropped > 1 else ''} are no longer sent)")
            pieces = self.llm.chat(sent, self.gen, stream=True, timings=timings)
            self.out.write(self.style.reply_start())
            try:
                for piece in pieces:
                    parts.append(piece)
                    self.out.write(piece)
                    self.out.flush()
            except KeyboardInterrupt:
                cut = True
                pieces.close()
            finally:
                self.out.write(self.style.reply_end() + ("\n" if parts or cut else ""))
                self.out.flush()
        except ContextOverflow as e:  # --memory: over the memory's budget, which may be under the context
            self._forget_turn()
            self.note(f"(this message does not fit: {e}; it was not kept)")
            return
        except ContextLengthError:
            self._forget_turn()
            self.note(f"(this message does not fit the {self._window()}-token context with {self.gen.max_new_tokens} "
                      "new tokens: shorten it, or /set max_new_tokens lower; it was not kept)")
            return
        except Exception as e:  # noqa: BLE001 - the session must outlive one failed turn
            log.debug("the turn failed", exc_info=True)
            self._forget_turn()
            # option names as /set spells them, which is how they reach a chat user
            self.note(f"(error: {str(e).splitlines()[0] if str(e) else type(e).__name__}; the message was not kept)")
            return
        reply = "".join(parts)
        if cut:
            self.note("(reply stopped: what was shown stays in the conversation, marked as cut)" if reply else
                      "(stopped before the reply began: the message was not kept)")
        if reply:
            self.messages.append({"role": "assistant", "content": reply, **({"cut": True} if cut else {})})
            if self.memory is not None:
                self.memory.add({"role": "assistant", "content": reply})
            self.dropped, self.sent = dropped, sent + [{"role": "assistant", "content": reply}]
        else:  # nothing to remember: keep the history well-formed (user, assistant, user, ...)
            self._forget_turn()
        self.last = timings
        if self.args.stats:
            self.note(format_timings(timings, self.load_s))

    def _fit(self) -> tuple[list[dict[str, Any]], int]:
        """What to send for the turn just added, and how many of the oldest messages are not sent:
        with --memory as the memory assembles it (a notice when it summarises or its window
        slides), else the most recent part that fits the context."""
        if self.memory is None:
            sent = self.llm.fit_history([{"role": m["role"], "content": m["content"]} for m in self.messages],
                                        self.gen.max_new_tokens)
            return sent, len(self.messages) - len(sent)
        sent = self.memory.context(self.llm, self.system, self.gen.max_new_tokens)
        made = getattr(self.memory, "summarized_now", 0)
        if made:
            self.note(f"(memory: {made} earlier message{'s' if made > 1 else ''} summarised into the system message)")
        dropped = len(self.memory.last.dropped_turns)
        if dropped > self.dropped:
            self.note(f"(memory: the oldest {dropped} message{'s' if dropped > 1 else ''} are no longer sent)")
        return sent, dropped

    def _forget_turn(self) -> None:
        """Undo the user message of a turn that got no reply (the conversation and the memory)."""
        self.messages.pop()
        if self.memory is not None and self.memory.messages and self.memory.messages[-1]["role"] == "user":
            try:
                self.memory.pop()
            except IndexError:  # already in a summary: nothing to undo
                pass


def read_message(style: Style, interactive: bool) -> str:
    """One message: a line, lines joined by a trailing backslash, or a triple-quote block (at a
    terminal; piped input is one message per line, as it always was)."""
    first = input(style.prompt(">>> ") if interactive else "")
    if not interactive:
        return first
    head = first.strip()
    if head.startswith(MULTILINE):
        body = head[len(MULTILINE):]
        if len(body) >= len(MULTILINE) and body.endswith(MULTILINE):  # opened and closed on one line
            return body[:-len(MULTILINE)]
        lines = [body] if body else []
        while True:
            line = input(style.prompt("... ") if interactive else "")
            if line.rstrip().endswith(MULTILINE):
                lines.append(line.rstrip()[:-len(MULTILINE)])
                return "\n".join(lines).strip("\n")
            lines.append(line)
    lines = [first]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(input(style.prompt("... ") if interactive else ""))
    return "\n".join(lines)


def run_chat(args: argparse.Namespace) -> None:
    out, err = sys.stdout, sys.stderr
    interactive = sys.stdin.isatty()
    style = Style(out)
    t0 = time.perf_counter()
    llm = load_llm(args)
    load_s = time.perf_counter() - t0
    getattr(llm, "require_generation", lambda: None)()  # an encoder is refused before the first prompt
    if args.max_new_tokens is None and not getattr(llm, "generation_defaults", {}).get("max_new_tokens"):
        try:
            window = llm.context_window
        except NotImplementedError:  # a server that does not say its context window
            window = 2048
        args.max_new_tokens = min(512, window // 4)
    session = ChatSession(llm, args, out, err, style, load_s)
    window = session._window()
    if window and session.gen.max_new_tokens >= window:
        session.note(f"(max_new_tokens {session.gen.max_new_tokens} leaves no room in the {window}-token context: "
                     f"using {min(512, window // 4)})")
        args.max_new_tokens = min(512, window // 4)
        session.gen = generation_config(args, llm)
    record = _readline(interactive)
    if interactive:
        session.note(f"chatting with {llm.name} — /help for commands, Ctrl-C stops a reply, Ctrl-D or /exit leaves")
    while True:
        try:
            line = read_message(style, interactive)
            record()
        except EOFError:
            if interactive:
                out.write("\n")
            break
        except KeyboardInterrupt:
            if not interactive:
                raise
            out.write("\n")
            session.note("(Ctrl-D or /exit leaves)")
            continue
        text = line.strip()
        if not text:
            continue
        try:
            if text.startswith("/") and not text.startswith("//"):
                if not session.command(text):
                    break
                continue
            session.reply(text[1:] if text.startswith("//") else line)
        except KeyboardInterrupt:  # between the reply's tokens is handled in reply(); this is before them
            if not interactive:
                raise
            if session.messages and session.messages[-1]["role"] == "user":
                session._forget_turn()
            out.write("\n")
            session.note("(stopped)")
