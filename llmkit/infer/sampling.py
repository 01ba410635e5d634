"""Sampling: `GenerationConfig`, composable logits processors, and the `Sampler` that makes every
next-token choice (static generation, the batching engine, speculative decoding).

Each processor is a small callable ``(logits, state) -> logits`` over a batch (rows, vocab);
`build_processors` chains them in the usual order: penalties, temperature, top-k, top-p, min-p.
The sampler masks what a grammar forbids, applies them, then takes the argmax (temperature 0) or
draws from the softmax.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..models.logprobs import token_logprobs

log = logging.getLogger(__name__)


class GenerationConfigError(ValueError):
    pass


@dataclass
class GenerationConfig:
    """How to generate. Defaults: 256 new tokens, plain sampling at temperature 1."""

    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # nucleus; 1 = off
    min_p: float = 0.0  # drop tokens below min_p × p(most likely); 0 = off
    repetition_penalty: float = 1.0  # CTRL-style, over prompt and output; 1 = off
    presence_penalty: float = 0.0  # OpenAI-style, over the output so far
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the text)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: bool = False  # return the log-probability of each chosen token
    top_logprobs: int = 0  # and of this many most likely alternatives
    truncate_prompt: bool = False  # drop the oldest prompt tokens instead of failing when too long
    # OpenAI's shapes: {"type": "json_object"} or {"type": "json_schema", "json_schema": {"name", "schema"}}
    response_format: dict[str, Any] | None = None
    # beam search (num_beams > 1): deterministic, scored as transformers scores it
    num_beams: int = 1
    length_penalty: float = 1.0  # a finished beam scores sum(log p) / length ** length_penalty
    early_stopping: bool | str = False  # True: stop once num_beams beams finished; "never": canonical search

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if isinstance(self.stop_token_ids, int) and not isinstance(self.stop_token_ids, bool):
            self.stop_token_ids = [self.stop_token_ids]
        self.validate()

    def validate(self) -> None:
        def bad(name: str, rule: str) -> GenerationConfigError:
            return GenerationConfigError(f"{name}={getattr(self, name)!r} is invalid: {rule}")

        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(name, "use a number")
        for name in ("max_new_tokens", "top_k", "top_logprobs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(name, "use an integer")
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(isinstance(t, int) for t in self.stop_token_ids):
            raise bad("stop_token_ids", "use a list of integer token ids")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise bad("seed", "use an integer or None")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise bad("max_new_tokens", "use a non-negative integer")
        if self.temperature < 0:
            raise bad("temperature", "use 0 for greedy decoding or a positive number")
        if self.top_k < 0:
            raise bad("top_k", "use 0 (off) or a positive integer")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "use a number in (0, 1]; 1 turns nucleus sampling off")
        if not 0 <= self.min_p < 1:
            raise bad("min_p", "use a number in [0, 1); 0 turns it off")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "use a positive number; 1 turns it off")
        if self.top_logprobs < 0:
            raise bad("top_logprobs", "use a non-negative integer")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", "stop strings must be non-empty strings")
        if self.response_format is not None:
            _check_response_format(self.response_format, bad)
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise bad("num_beams", "use a positive integer; 1 turns beam search off")
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)):
            raise bad("length_penalty", "use a number (1 divides a beam's log-probability by its length, 0 not at all)")
        if not (self.early_stopping is True or self.early_stopping is False or self.early_stopping == "never"):
            raise bad("early_stopping", 'use True, False or "never"')
        if self.num_beams == 1:
            for name, off in (("length_penalty", 1.0), ("early_stopping", False)):
                if getattr(self, name) != off:
                    raise bad(name, "it shapes beam search only: set num_beams > 1, or leave it out")
        if self.num_beams > 1:
            for name, off, meaning in BEAM_CONFLICTS:
                if getattr(self, name) not in off:
                    raise bad(name, f"beam search (num_beams={self.num_beams}) is deterministic and takes no "
                                    f"{meaning}: leave {name} at {off[0]!r} or set num_beams=1")

    def replace(self, **changes: Any) -> "GenerationConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_kwargs(cls, gen: "GenerationConfig | None" = None, **kwargs: Any) -> "GenerationConfig":
        """Merge keyword arguments into `gen` (or the defaults), naming any unknown option."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise GenerationConfigError(f"unknown generation option(s) {unknown}: known options are {sorted(known)}")
        base = gen if gen is not None else cls()
        return base.replace(**kwargs) if kwargs else base


# options beam search refuses: (name, values that leave it off, what it is)
BEAM_CONFLICTS = (
    ("temperature", (0, 0.0, 1, 1.0), "sampling temperature"),
    ("top_k", (0,), "top-k sampling"),
    ("top_p", (1, 1.0), "nucleus sampling"),
    ("min_p", (0, 0.0), "min-p sampling"),
    ("repetition_penalty", (1, 1.0), "repetition penalty"),
    ("presence_penalty", (0, 0.0), "presence penalty"),
    ("frequency_penalty", (0, 0.0), "frequency penalty"),
    ("response_format", (None,), "grammar constraint (response_format)"),
    ("logprobs", (False,), "per-token log-probabilities"),
    ("top_logprobs", (0,), "top log-probabilities"),
)

# the options that make up a model's own sampling settings (`generation_defaults`, with max_new_tokens)
SAMPLING_OPTIONS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def valid_settings(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """The entries of a model's own settings that `GenerationConfig` accepts; the others are
    dropped with a warning naming `where` (a file may hold values transformers takes and we do
    not, e.g. top_p 0), so that they never fail a call that did not ask for them."""
    out = {}
    for name, value in settings.items():
        try:
            GenerationConfig(**{name: value})
        except (GenerationConfigError, TypeError) as e:
            log.warning("ignoring %s's %s=%r: %s", where, name, value, e)
            continue
        out[name] = value
    return out


def layered_sampling(given: dict[str, Any], own: dict[str, Any],
                     fallbacks: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampling options of a command line or an API request: each one the caller `given`
    (None = left out) wins, then the model's `own` setting, then `fallbacks` (as vLLM and Ollama
    layer them). One exception: a caller who asks for greedy decoding (temperature 0) and names no
    repetition penalty gets none — greedy then means the plain argmax, as evaluation expects."""
    if (given.get("num_beams") or 1) > 1:  # beam search samples nothing: only what the caller named
        return {name: given[name] for name in SAMPLING_OPTIONS if given.get(name) is not None}
    greedy = given.get("temperature") == 0
    out: dict[str, Any] = {}
    for name in SAMPLING_OPTIONS:
        if given.get(name) is not None:
            out[name] = given[name]
        elif name in own and not (greedy and name == "repetition_penalty"):
            out[name] = own[name]
        elif fallbacks and name in fallbacks:
            out[name] = fallbacks[name]
    return out


class SamplingState:
    """What the processors may look at: per-row counts of generated tokens and the set of
    tokens seen in prompt or output (for the repetition penalty)."""

    def __init__(self, batch: int, vocab: int, device: torch.device, track_prompt: bool):
        self.counts = torch.zeros(batch, vocab, device=device)
        self.seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device) if track_prompt else None

    def add_prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if self.seen is None:
            return
        real = torch.ones_like(input_ids, dtype=torch.int32) if attention_mask is None else attention_mask.int()
        hits = torch.zeros_like(self.seen, dtype=torch.int32).scatter_add_(1, input_ids, real)
        self.seen |= hits > 0

    def add_tokens(self, tokens: torch.Tensor) -> None:
        self.counts.scatter_add_(1, tokens[:, None], torch.ones_like(tokens[:, None], dtype=self.counts.dtype))
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)


Processor = Callable[[torch.Tensor, SamplingState], torch.Tensor]


def repetition_penalty(penalty: float) -> Processor:
    """Divide positive logits (multiply negative ones) of already-seen tokens by `penalty`
    (Keskar et al. 2019, as transformers applies it)."""

    def apply(logits: torch.Tensor, state: SamplingState) -> torch.Tensor:
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        return torch.where(state.seen, penalised, logits)

    return apply


def presence_frequency_penalty(presence: float, frequency: float) -> Processor:
    """OpenAI's penalties: subtract `presence` once from every token generated so far and
    `frequency` for every time it was generated."""

    def apply(logits: torch.Tensor, state: SamplingState) -> torch.Tensor:
        return logits - presence * (state.counts > 0).to(logits.dtype) - frequency * state.counts.to(logits.dtype)

    return apply


def temperature(t: float) -> Processor:
    return lambda logits, state: logits / t


def top_k(k: int) -> Processor:
    """Keep the k largest logits (ties at the k-th value kept too)."""

    def apply(logits: torch.Tensor, state: SamplingState) -> torch.Tensor:
        k_eff = min(k, logits.shape[-1])
        kth = torch.topk(logits, k_eff, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))

    return apply


def top_p(p: float) -> Processor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability reaches p; the most likely token is always kept."""

    def apply(logits: torch.Tensor, state: SamplingState) -> torch.Tensor:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # mass strictly before each token: a token is kept while that mass is still below p
        before = probs.cumsum(-1) - probs
        drop_sorted = before >= p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))

    return apply


def min_p(p: float) -> Processor:
    """Keep tokens whose probability is at least p times that of the most likely token."""

    def apply(logits: torch.Tensor, state: SamplingState) -> torch.Tensor:
        probs = logits.softmax(-1)
        threshold = p * probs.max(dim=-1, keepdim=True).values
        return logits.masked_fill(probs < threshold, float("-inf"))

    return apply


def build_processors(gen: GenerationConfig) -> list[Processor]:
    procs: list[Processor] = []
    if gen.repetition_penalty != 1.0:
        procs.append(repetition_penalty(gen.repetition_penalty))
    if gen.presence_penalty or gen.frequency_penalty:
        procs.append(presence_frequency_penalty(gen.presence_penalty, gen.frequency_penalty))
    if gen.temperature > 0:  # greedy ignores the shaping below
        if gen.temperature != 1.0:
            procs.append(temperature(gen.temperature))
        if gen.top_k:
            procs.append(top_k(gen.top_k))
        if gen.top_p < 1.0:
            procs.append(top_p(gen.top_p))
        if gen.min_p > 0:
            procs.append(min_p(gen.min_p))
    return procs


def sample(logits: torch.Tensor, gen: GenerationConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else a draw from softmax(logits)."""
    if gen.temperature == 0:
        return logits.argmax(dim=-1)
    return draw(logits.float().softmax(-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token drawn from each row of `probs` (a 0-d tensor for a single distribution)."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def top_logprobs(logits: torch.Tensor, k: int) -> list[dict[int, float]]:
    """The `k` most likely tokens of each row of `logits` with their log-probabilities."""
    values, idx = logits.float().log_softmax(-1).topk(min(k, logits.shape[-1]), dim=-1)
    return [dict(zip(i, v)) for i, v in zip(idx.tolist(), values.tolist())]


def stop_token_ids(gen: GenerationConfig, eos_ids: Sequence[int] | set[int] = ()) -> set[int]:
    """The tokens that end a row: the request's `stop_token_ids`, and the end tokens unless `ignore_eos`."""
    return set(gen.stop_token_ids) | (set() if gen.ignore_eos else set(eos_ids))


def _check_response_format(fmt: Any, bad: Callable[[str, str], Exception]) -> None:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema", "structural_tag"):
        raise bad("response_format", 'use {"type": "json_object"}, {"type": "json_schema", "json_schema": '
                                     '{"name": ..., "schema": {...}}}, {"type": "structural_tag", "format": {...}} '
                                     'or {"type": "text"}')
    if kind == "structural_tag" and not isinstance(fmt.get("format"), dict):
        raise bad("response_format", 'a structural_tag format needs {"format": {...}}, an xgrammar structural tag')
    spec = fmt.get("json_schema")
    if kind == "json_schema" and not (isinstance(spec, dict) and isinstance(spec.get("schema"), dict)):
        raise bad("response_format", 'a json_schema format needs {"json_schema": {"name": ..., "schema": {...}}} '
                                     "with the JSON schema as an object")


class Sampler:
    """The next-token choice of one request: its logits processors and the token counts they read,
    its seeded generator, its stop ids and, when its `response_format` asks for JSON, a grammar
    constraint per row. The static loop, the batching engine and speculative decoding all choose
    through it, so a setting means the same on every path.

    A request may hold several rows (the prompts of one `generate` call under one config); they
    share one generator, so a seeded batch draws as one (rows, vocab) multinomial."""

    def __init__(self, gen: GenerationConfig, vocab_size: int, device: torch.device | str, rows: int = 1,
                 eos_ids: Sequence[int] | set[int] = (), tokenizer: Any = None, constraints: Sequence[Any] | None = None):
        """`tokenizer` is needed only for a JSON `response_format`; `constraints` (one per row, e.g.
        a `JSONConstraint`) overrides what `response_format` would build."""
        self.gen, self.device = gen, torch.device(device)
        self.greedy = gen.temperature == 0
        self.processors = build_processors(gen)
        self.state = SamplingState(rows, vocab_size, self.device, track_prompt=gen.repetition_penalty != 1.0)
        self.generator = None  # greedy draws nothing; unseeded draws use torch's global generator
        if gen.seed is not None and not self.greedy:
            self.generator = torch.Generator(device=self.device).manual_seed(gen.seed)
        self.stop_ids = stop_token_ids(gen, eos_ids)
        if constraints is None and gen.response_format and gen.response_format["type"] != "text":
            from .constrained import response_constraint

            constraints = [response_constraint(gen.response_format, tokenizer, vocab_size, self.stop_ids)
                           for _ in range(rows)]
        self.constraints: list[Any] | None = list(constraints) if constraints else None

    def add_prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Let the repetition penalty see the prompt tokens (rows, length)."""
        self.state.add_prompt(input_ids, attention_mask)

    def shape(self, logits: torch.Tensor) -> torch.Tensor:
        """fp32 `logits` (rows, vocab) with the grammar's forbidden tokens at -inf, then processed."""
        shaped = logits.float()
        if self.constraints:
            shaped = torch.cat([shaped[i:i + 1] if c is None else c.mask(shaped[i:i + 1])
                                for i, c in enumerate(self.constraints)])
        for proc in self.processors:
            shaped = proc(shaped, self.state)
        return shaped

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every row of `logits` (rows, vocab), recorded for penalties and grammars."""
        tokens = sample(self.shape(logits), self.gen, self.generator)
        self.state.add_tokens(tokens)
        if self.constraints:
            for c, tok in zip(self.constraints, tokens.tolist()):
                if c is not None:
                    c.accept(tok)
        return tokens

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """What `choose` draws from, per row: softmax of the shaped logits (one-hot when greedy)."""
        shaped = self.shape(logits)
        if self.greedy:
            return F.one_hot(shaped.argmax(-1), shaped.shape[-1]).float()
        return shaped.softmax(-1)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """A token from each row of `probs` (speculative decoding's target and residual distributions)."""
        return probs.argmax(-1) if self.greedy else draw(probs, self.generator)

    def uniform(self) -> float:
        """A uniform number in [0, 1) from the request's stream (speculative acceptance tests)."""
        return float(torch.rand((), generator=self.generator, device=self.device))

    def is_stop(self, token: int) -> bool:
        return token in self.stop_ids

    def release(self, row: int) -> None:
        """`row` has finished: stop holding its tokens to the grammar (a finished grammar allows none)."""
        if self.constraints:
            self.constraints[row] = None

    def logprobs(self, logits: torch.Tensor, tokens: torch.Tensor) -> tuple[list[float] | None,
                                                                         list[dict[int, float]] | None]:
        """log p of each row's chosen token under the model (before any shaping) and the
        `top_logprobs` alternatives, as far as the request asks for them."""
        gen = self.gen
        if not (gen.logprobs or gen.top_logprobs):
            return None, None
        chosen = token_logprobs(logits, tokens).tolist()
        return chosen, top_logprobs(logits, gen.top_logprobs) if gen.top_logprobs else None
