"""`llmkit tools list|run|docs`: the built-in tools an agent can call (calculator, python, datetime,
stdlib-docs) — list them with their parameters, run one on JSON arguments, search the standard
library's documentation."""

from __future__ import annotations

import argparse
import json
import sys

from .commands import positive_int


def add_tools_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tools_verb", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="the built-in tools: names, descriptions and parameters",
                        description="List the built-in tools: for each, the name to give `--tools` or "
                                    "`llmkit tools run`, its parameters and the description the model reads.")
    ls.add_argument("--json", action="store_true",
                    help="print the tools as an OpenAI `tools` list (JSON Schema parameters) instead")
    run = sub.add_parser("run", help="run one tool on JSON arguments and print what the model would read",
                         description="Run the built-in tool NAME on ARGUMENTS (a JSON object) and print its "
                                     "observation: the result, or the error text the model would read (then the "
                                     "exit status is 1: a line of it starts with 'error: ', e.g. after a failed "
                                     "program's output). Example: llmkit tools run days_between "
                                     "'{\"start\": \"2024-02-03\", \"end\": \"2024-11-23\"}'")
    run.add_argument("name", help="a tool's name, e.g. calculator, python, now, days_between, stdlib_docs")
    run.add_argument("arguments", nargs="?", default="{}", help="its arguments as a JSON object (default {})")
    docs = sub.add_parser("docs", help="search the Python standard library's documentation by keywords",
                          description="Search the documentation of the Python standard library (modules, "
                                      "functions, classes, methods, language topics) with BM25, as the "
                                      "stdlib-docs tool does. The index is built on first use (a few seconds) and "
                                      "cached in $LLMKIT_HOME/indexes.")
    docs.add_argument("query", help='what to look for, in words, e.g. "days between two dates"')
    docs.add_argument("-k", type=positive_int, default=5, help="how many results (default 5)")
    docs.add_argument("--full", action="store_true", help="print each hit's whole text, not its first lines")
    docs.add_argument("--rebuild", action="store_true", help="build the index again instead of loading the cache")
    for action in (ls, run, docs):  # also after the action; SUPPRESS keeps a -v given before it
        action.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                            help="show progress logs")


def _parameters(schema: dict) -> str:
    """``(expression: string, k: integer = 5)`` from a tool's JSON Schema."""
    required = set(schema.get("required", []))
    parts = []
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type") or "|".join(o.get("type", "?") for o in prop.get("anyOf", [])) or "any"
        default = "" if name in required or "default" not in prop else f" = {json.dumps(prop['default'])}"
        parts.append(f"{name}: {kind}{default}")
    return f"({', '.join(parts)})"


def run_tools(args: argparse.Namespace) -> int:
    from ..apps.toolbox import BUILTIN_TOOLS, builtin_tools

    if args.tools_verb == "list":
        groups = {key: builtin_tools(key) for key in BUILTIN_TOOLS}
        if args.json:
            print(json.dumps([t.spec() for tools in groups.values() for t in tools], indent=2))
            return 0
        for key, tools in groups.items():
            for tool in tools:
                print(f"{tool.name}{_parameters(tool.parameters)}  [{key}]")
                print(f"    {tool.description}")
        return 0
    if args.tools_verb == "run":
        tools = builtin_tools(args.name)
        if len(tools) != 1:
            raise ValueError(f"{args.name!r} names {len(tools)} tools ({', '.join(t.name for t in tools)}): "
                             "run one of them")
        observation = tools[0].run(args.arguments)
        print(observation)
        from ..apps.tools import failed

        return 1 if failed(observation) else 0
    from ..apps.docs_search import stdlib_cache_dir, stdlib_docs_index

    if args.rebuild or not (stdlib_cache_dir() / "manifest.json").exists():
        print("building the standard-library documentation index (once; a few seconds) ...", file=sys.stderr)
    hits = stdlib_docs_index(rebuild=args.rebuild).search(args.query, args.k)
    if not hits:
        print(f"no documentation matches {args.query!r}", file=sys.stderr)
        return 1
    for rank, hit in enumerate(hits, 1):
        text = hit.text if args.full else "\n".join(hit.text.splitlines()[:6])
        print(f"{rank}. {hit.title} ({hit.metadata.get('kind', 'document')}, score {hit.score:.2f})")
        print("   " + text.replace("\n", "\n   "))
        print()
    return 0
