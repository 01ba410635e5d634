"""Prompt templates with declared variables (Jinja2), rendered as chat messages or as text through
a model's chat template.

    p = Prompt("Translate to {{ language }}: {{ text }}", system="You are terse.")
    p.messages(language="French", text="cheese")   # [{"role": "system", ...}, {"role": "user", ...}]
    p.render(language="French")                    # PromptError: missing variable 'text'

Variables are declared by the template itself (every name it reads), or explicitly with
``variables=``, in which case the template may read no other name. Rendering with a name the
template does not declare, or without one it needs, is an error that names it: a typo never
renders silently as an empty string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

Messages = list[dict[str, Any]]


class PromptError(ValueError):
    """A template that does not parse, or values that do not match its variables."""


def _environment():
    import jinja2

    # autoescape off: prompts are text for a model, not HTML
    return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


def _parse(env: Any, source: str, where: str) -> tuple[Any, set[str]]:
    import jinja2
    from jinja2 import meta

    try:
        ast = env.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise PromptError(f"the {where} template does not parse: {e.message} (line {e.lineno})") from None
    return env.from_string(source), set(meta.find_undeclared_variables(ast))


@dataclass
class Prompt:
    """A user-turn template (`template`) and an optional system template (`system`), both Jinja2.
    `variables` declares the names they may use; left out, it is every name they read."""

    template: str
    system: str | None = None
    variables: Sequence[str] | None = None
    _compiled: list[Any] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.template, str):
            raise PromptError(f"template must be a string, got {type(self.template).__name__}")
        env = _environment()
        user, used = _parse(env, self.template, "user")
        self._compiled = [user, None]
        if self.system is not None:
            self._compiled[1], used_system = _parse(env, self.system, "system")
            used |= used_system
        if self.variables is None:
            self.variables = tuple(sorted(used))
        else:
            self.variables = tuple(self.variables)
            undeclared = sorted(used - set(self.variables))
            if undeclared:
                raise PromptError(f"the template reads {', '.join(map(repr, undeclared))}, which "
                                  f"variables={list(self.variables)} does not declare: declare it or fix the name")

    def check(self, values: dict[str, Any]) -> None:
        """Raise `PromptError` naming the first missing or unknown variable."""
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise PromptError(f"missing variable {missing[0]!r}: this prompt needs {', '.join(self.variables)}")
        unknown = sorted(set(values) - set(self.variables))
        if unknown:
            known = ", ".join(self.variables) or "none"
            raise PromptError(f"unknown variable {unknown[0]!r}: this prompt declares {known}")

    def render(self, **values: Any) -> str:
        """The user turn's text."""
        self.check(values)
        return _render(self._compiled[0], values, "user")

    def render_system(self, **values: Any) -> str | None:
        self.check(values)
        return None if self._compiled[1] is None else _render(self._compiled[1], values, "system")

    def messages(self, history: Messages = (), **values: Any) -> Messages:
        """The chat messages: the system turn (if any), then `history` (earlier turns), then the
        rendered user turn."""
        system = self.render_system(**values)
        head = [{"role": "system", "content": system}] if system is not None else []
        return head + [dict(m) for m in history] + [{"role": "user", "content": self.render(**values)}]

    def text_for(self, llm: Any, history: Messages = (), **values: Any) -> str:
        """The prompt as the model reads it: through its chat template when it has one (a local
        model), else the system and user text joined by blank lines (a plain completion model)."""
        return render_messages(llm, self.messages(history, **values))


def _render(template: Any, values: dict[str, Any], where: str) -> str:
    """`template` rendered; a value without the attribute or key the template reads (``{{ user.name }}``
    with no name) is a `PromptError` that names it, as a missing variable is."""
    import jinja2

    try:
        return template.render(**values)
    except jinja2.UndefinedError as e:
        raise PromptError(f"the {where} template reads something its values do not have: {e.message}") from None


def has_chat_template(llm: Any) -> bool:
    tokenizer = getattr(llm, "tokenizer", None)
    return bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else False


def render_messages(llm: Any, messages: Messages) -> str:
    """`messages` as the text the model continues: its chat template with the assistant's turn
    opened, or, for a model without one, the turns' contents separated by blank lines."""
    if has_chat_template(llm):
        return llm.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True)
    return "\n\n".join(str(m.get("content") or "") for m in messages) + "\n"
