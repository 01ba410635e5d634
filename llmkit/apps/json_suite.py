"""A suite of structured-output cases, and how often a model answers them with valid JSON.

    report = run_json_suite(llm)                  # the shipped suite (llmkit/apps/data/json_suite.jsonl)
    report.first_try_rate, report.valid_rate      # parse-and-validate rates, before and after repairs
    write_json_suite(report, "runs/json")         # results.json (per case) and report.md

Each case is one JSONL row: ``{"id", "prompt", "schema", "max_tokens", "example"}``, where
`example` is a hand-written valid answer (the tests check it against the schema and check that
`max_tokens` leaves room for it). The shipped cases cover nested objects, arrays with
minItems/maxItems, enums, numeric ranges, integers, anyOf, $ref/$defs (recursive too), string
patterns, formats (date, date-time, email, uuid, ipv4), required and optional properties,
booleans, nulls and const.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.jsonl import read_jsonl
from .structured import JSONAttempt, StructuredOutputError, check_schema, generate_json_with_info

log = logging.getLogger(__name__)


@dataclass
class JSONCase:
    """One prompt and the schema its answer must satisfy, in at most `max_tokens` tokens."""

    id: str
    prompt: str
    schema: dict[str, Any]
    max_tokens: int
    example: Any = None  # a valid answer, for checking the case itself


def suite_path() -> Path:
    """The shipped suite's file."""
    return Path(str(resources.files("llmkit.apps") / "data" / "json_suite.jsonl"))


def _parse_case(row: Any) -> list[JSONCase]:
    if not isinstance(row, dict):
        raise ValueError("a case must be a JSON object with id, prompt, schema and max_tokens")
    missing = [k for k in ("id", "prompt", "schema", "max_tokens") if k not in row]
    if missing:
        raise ValueError(f"case {row.get('id', '?')!r} lacks {', '.join(missing)}")
    if not isinstance(row["max_tokens"], int) or isinstance(row["max_tokens"], bool) or row["max_tokens"] < 1:
        raise ValueError(f"case {row['id']!r}: max_tokens={row['max_tokens']!r} must be a positive integer")
    check_schema(row["schema"])  # JSONSchemaError (a ValueError) names the problem
    return [JSONCase(str(row["id"]), str(row["prompt"]), row["schema"], row["max_tokens"], row.get("example"))]


def load_json_suite(path: str | Path | None = None, ids: Sequence[str] | None = None) -> list[JSONCase]:
    """The cases of a suite file (default: the shipped one), or only those named in `ids` (in
    the file's order); a bad row or an unknown id is an error naming it."""
    path = Path(path) if path is not None else suite_path()
    cases, _ = read_jsonl(path, _parse_case, what="cases", fix="Fix the rows")
    seen: set[str] = set()
    for c in cases:
        if c.id in seen:
            raise ValueError(f"{path}: case id {c.id!r} appears twice")
        seen.add(c.id)
    if ids:
        unknown = sorted(set(ids) - seen)
        if unknown:
            raise ValueError(f"no case {', '.join(map(repr, unknown))} in {path}: its cases are {sorted(seen)}")
        cases = [c for c in cases if c.id in set(ids)]
    return cases


@dataclass
class JSONCaseResult:
    """One case's outcome: valid in the end, and at which attempt; every attempt's text and error."""

    id: str
    valid: bool
    attempts: list[JSONAttempt]
    value: Any = None

    @property
    def first_try(self) -> bool:
        return self.valid and len(self.attempts) == 1

    @property
    def text(self) -> str:
        return self.attempts[-1].text if self.attempts else ""

    @property
    def error(self) -> str | None:
        return self.attempts[-1].error if self.attempts else None

    @property
    def seconds(self) -> float:
        return sum(a.seconds for a in self.attempts)

    @property
    def completion_tokens(self) -> int | None:
        counts = [a.completion_tokens for a in self.attempts]
        return None if any(n is None for n in counts) else sum(counts)  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "valid": self.valid, "first_try": self.first_try, "attempts": len(self.attempts),
                "text": self.text, "error": self.error, "value": self.value, "seconds": round(self.seconds, 3),
                "completion_tokens": self.completion_tokens,
                "tries": [asdict(a) for a in self.attempts]}


@dataclass
class JSONSuiteReport:
    """Parse-and-validate rates of one model over a suite: at the first attempt and after repairs."""

    model: str
    retries: int
    constrained: bool
    results: list[JSONCaseResult] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.results)

    @property
    def valid_rate(self) -> float:
        return sum(r.valid for r in self.results) / self.n if self.n else 0.0

    @property
    def first_try_rate(self) -> float:
        return sum(r.first_try for r in self.results) / self.n if self.n else 0.0

    @property
    def retries_used(self) -> int:
        return sum(len(r.attempts) - 1 for r in self.results)

    @property
    def completion_tokens(self) -> int | None:
        counts = [r.completion_tokens for r in self.results]
        return None if any(n is None for n in counts) else sum(counts)  # type: ignore[misc]

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.results)

    def summary(self) -> dict[str, Any]:
        tokens = self.completion_tokens
        latencies = [r.seconds for r in self.results]
        return {"model": self.model, "cases": self.n, "constrained": self.constrained, "retries": self.retries,
                "first_try_rate": self.first_try_rate, "valid_rate": self.valid_rate,
                "retries_used": self.retries_used, "completion_tokens": tokens, "seconds": round(self.seconds, 3),
                "median_case_seconds": round(statistics.median(latencies), 3) if latencies else None,
                "tokens_per_second": round(tokens / self.seconds, 2) if tokens and self.seconds else None}

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "cases": [r.to_dict() for r in self.results]}

    def markdown(self) -> str:
        s = self.summary()
        mode = "constrained (response_format)" if self.constrained else "unconstrained"
        lines = [f"# Structured output: {self.model}", "",
                 f"{self.n} cases, {mode}, at most {self.retries} repair(s) per case.", "",
                 "| measure | value |", "| --- | --- |",
                 f"| valid at the first attempt | {sum(r.first_try for r in self.results)}/{self.n} "
                 f"({self.first_try_rate:.1%}) |",
                 f"| valid after repairs | {sum(r.valid for r in self.results)}/{self.n} ({self.valid_rate:.1%}) |",
                 f"| repairs asked for | {self.retries_used} |",
                 f"| generated tokens | {s['completion_tokens'] if s['completion_tokens'] is not None else 'n/a'} |",
                 f"| time | {self.seconds:.1f} s (median {s['median_case_seconds']} s a case) |", "",
                 "| case | valid | attempts | tokens | seconds | last error |", "| --- | --- | --- | --- | --- | --- |"]
        for r in self.results:
            error = (r.error or "").replace("|", "\\|").replace("\n", " ")[:120]
            tokens = r.completion_tokens if r.completion_tokens is not None else ""
            lines.append(f"| {r.id} | {'yes' if r.valid else 'NO'} | {len(r.attempts)} | {tokens} | {r.seconds:.2f} | "
                         f"{error} |")
        return "\n".join(lines) + "\n"


def run_json_suite(llm: Any, cases: Sequence[JSONCase] | None = None, retries: int = 2,
                   progress: Callable[[JSONCaseResult], None] | None = None, constrain: bool = True,
                   **gen: Any) -> JSONSuiteReport:
    """Ask `llm` every case (default: the shipped suite) through `generate_json` at temperature 0
    (unless `gen` says otherwise) with at most `retries` repairs; `progress(result)` is called
    after each case."""
    cases = list(cases) if cases is not None else load_json_suite()
    report = JSONSuiteReport(str(getattr(llm, "name", None) or type(llm).__name__), retries, constrain)
    for case in cases:
        try:
            found = generate_json_with_info(llm, case.prompt, case.schema, max_tokens=case.max_tokens,
                                            retries=retries, constrain=constrain, **gen)
            result = JSONCaseResult(case.id, True, found.attempts, found.value)
        except StructuredOutputError as e:
            result = JSONCaseResult(case.id, False, e.attempts)
        except Exception as e:  # noqa: BLE001 - one broken case (a refused schema, a server error) fails alone
            log.warning("%s: %s", case.id, e)
            result = JSONCaseResult(case.id, False, [JSONAttempt("", f"{type(e).__name__}: {e}", 0.0)])
        log.info("%s: %s after %d attempt(s)", case.id, "valid" if result.valid else "INVALID", len(result.attempts))
        report.results.append(result)
        if progress is not None:
            progress(result)
    return report


def write_json_suite(report: JSONSuiteReport, out: str | Path) -> tuple[Path, Path]:
    """results.json and report.md in the directory `out`, each written atomically."""
    from ..utils import write_json_atomic, write_text_atomic

    out = Path(out)
    results, md = out / "results.json", out / "report.md"
    write_json_atomic(results, report.to_dict())
    write_text_atomic(md, report.markdown())
    return results, md
