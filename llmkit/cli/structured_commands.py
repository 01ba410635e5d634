"""The structured-output verbs: `llmkit json` (one answer as validated JSON) and `llmkit json-suite`
(how often a model answers the structured-output suite with valid JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from .commands import add_model_arg, load_llm, non_negative_int, positive_int


def _add_common(p: argparse.ArgumentParser) -> None:
    add_model_arg(p)
    p.add_argument("--retries", type=non_negative_int, default=2,
                   help="how many times an answer that does not parse or validate is sent back with its error for "
                        "a corrected one (default 2)")
    p.add_argument("--no-constrain", action="store_true",
                   help="do not send response_format (no grammar): measure what the model does on its own")


# ------------------------------------------------------------------------------------ json-suite
def add_structured_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Ask --model every case of the structured-output suite (prompts with JSON Schemas: nested objects, arrays, "
        "enums, ranges, anyOf, $ref, patterns, formats, nulls) at temperature 0, through response_format, and "
        "measure how many answers parse and validate at the first attempt and after --retries repairs. Writes "
        "results.json (per case: valid, attempts, text) and report.md to --out. --model may be an http(s)://…/v1 "
        "server: one that ignores response_format is repaired by asking again.")
    _add_common(p)
    p.add_argument("--suite", default=None, metavar="FILE.jsonl",
                   help="cases to run instead of the shipped suite: one {id, prompt, schema, max_tokens} per line")
    p.add_argument("--case", action="append", default=[], metavar="ID",
                   help="run only this case (repeatable; default: every case)")
    p.add_argument("--out", default=None, help="output folder (default runs/json-suite-DATE-TIME)")


def run_structured(args: argparse.Namespace) -> int:
    from ..apps.json_suite import load_json_suite, run_json_suite, write_json_suite

    cases = load_json_suite(args.suite, ids=args.case or None)  # a bad file or id fails before the model loads
    llm = load_llm(args)
    interactive = sys.stderr.isatty()

    def progress(result) -> None:
        if interactive or getattr(args, "verbose", False):
            mark = "ok" if result.valid else "FAILED"
            print(f"{result.id}: {mark} ({len(result.attempts)} attempt(s), {result.seconds:.1f} s)", file=sys.stderr)

    report = run_json_suite(llm, cases, retries=args.retries, progress=progress, constrain=not args.no_constrain)
    out = Path(args.out or f"runs/json-suite-{datetime.now():%Y%m%d-%H%M%S}")
    results, md = write_json_suite(report, out)
    s = report.summary()
    first = sum(r.first_try for r in report.results)
    valid = sum(r.valid for r in report.results)
    print(f"{report.model}: valid JSON at the first attempt {first}/{report.n} ({report.first_try_rate:.1%}), "
          f"after repairs {valid}/{report.n} ({report.valid_rate:.1%}); {report.retries_used} repair(s), "
          f"{report.seconds:.1f} s" + (f", {s['completion_tokens']} tokens" if s["completion_tokens"] else ""))
    failed = [r.id for r in report.results if not r.valid]
    if failed:
        print(f"invalid: {', '.join(failed)} (see {md})")
    print(f"wrote {results}, {md}")
    return 0


# ------------------------------------------------------------------------------------------ json
def add_json_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Answer PROMPT with JSON that validates against --schema (a JSON Schema file, or the schema itself as "
        "inline JSON) and print it. The schema is enforced with a grammar where the model allows it (a local "
        "model, llmkit serve); an answer that does not parse or validate is sent back with its error, at most "
        "--retries times; then the command fails naming the error.")
    _add_common(p)
    p.add_argument("--schema", "-s", required=True, metavar="FILE.json|JSON",
                   help="the JSON Schema: a file, or inline JSON starting with '{'")
    p.add_argument("prompt", help="the user's message ('-' reads standard input)")
    p.add_argument("--system", default=None, help="a system message, put before the schema instruction")
    p.add_argument("--max-tokens", type=positive_int, default=512, help="budget of each answer (default 512)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling at a temperature above 0")
    p.add_argument("--compact", action="store_true", help="print the JSON on one line")


def read_schema(value: str) -> dict:
    """--schema: inline JSON (starting with '{'), else a file holding a JSON object."""
    if value.lstrip().startswith("{"):
        source, text = "--schema", value
    else:
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"--schema {value}: no such file (give a JSON Schema file, or inline JSON)")
        source, text = f"--schema {value}", path.read_text(encoding="utf-8")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} is not JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if not isinstance(schema, dict):
        raise ValueError(f"{source} must hold a JSON object (a JSON Schema), not a {type(schema).__name__}")
    return schema


def run_json(args: argparse.Namespace) -> int:
    from ..apps.structured import check_schema, generate_json

    schema = read_schema(args.schema)
    check_schema(schema)  # a bad schema fails before the model loads
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise ValueError("the prompt is empty: give the question to answer")
    llm = load_llm(args)
    options = {"seed": args.seed} if args.seed is not None else {}
    value = generate_json(llm, prompt, schema, max_tokens=args.max_tokens, retries=args.retries,
                          temperature=args.temperature, system=args.system, constrain=not args.no_constrain,
                          **options)
    print(json.dumps(value, ensure_ascii=False, **({"separators": (",", ":")} if args.compact else {"indent": 2})))
    return 0
