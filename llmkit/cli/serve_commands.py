"""`llmkit serve`: the OpenAI-compatible server."""

from __future__ import annotations

import argparse
import sys

from .commands import add_quantize_arg, load_llm, positive_int
from .safety_commands import add_guard_model_args, build_guard_set, check_guard_args, guards_spec


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True,
                   help="HF model directory, run directory, or a name in the model cache; an encoder (e.g. "
                        "all-minilm-l6-v2) is served for /v1/embeddings only, chat and completions refuse it")
    p.add_argument("--embedder", default=None, metavar="NAME",
                   help="a second model (any name --model takes, e.g. all-minilm-l6-v2 from `llmkit pull`) that "
                        "answers every /v1/embeddings request, whichever served model it names (the chat model's "
                        "name too; the response's `model` field says which embedded); /v1/models lists it under "
                        "its own name beside the model")
    p.add_argument("--embed-precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="how /v1/embeddings computes: auto (default) uses bf16 where it is fast (a GPU, a CPU with "
                        "AMX or AVX512-BF16; cosine to fp32's vectors about 0.99997), fp32 as the reference does")
    p.add_argument("--name", default=None,
                   help="the model's name in the API (the `model` field; default: the name `llmkit chat` shows: "
                        "the model folder's name, a .gguf file's stem, or the model cache's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--dtype", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="weight dtype (default auto: fp32 on CPU, bf16/fp16 on GPU)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="a LoRA (or bottleneck) adapter served as model 'NAME_OF_MODEL:NAME' beside the base; "
                        "repeatable, all on one engine")
    add_quantize_arg(p)
    p.add_argument("overrides", nargs="*", metavar="guards=NAME",
                   help="guards on every chat and completions request and reply (default none): guards=default "
                        "(topics, injection, secrets, pii), or a comma-separated list, e.g. guards=injection,pii; "
                        "a refused request is answered with the guard's text (finish_reason stop, `refusal` set, "
                        "llmkit_guard saying why); with guards a stream is checked whole before it is sent; "
                        "guards=default,constitution adds the critique-and-revise loop, by --critic; "
                        "guards=default,injection_model,harm_model adds the learned classifiers of --injection-model "
                        "and --harm-model")
    add_guard_model_args(p, "a second copy of --model, so that critiques never wait on the batch")
    e = p.add_argument_group("engine")
    e.add_argument("--max-batch", type=positive_int, default=16,
                   help="most requests decoded together in one step (default 16)")
    e.add_argument("--kv-cache-tokens", type=positive_int, default=None,
                   help="tokens the paged KV cache holds across all requests (default: max-batch × half the "
                        "context window, at least one full window)")
    e.add_argument("--block-size", type=positive_int, default=16, help="tokens per KV cache block (default 16)")
    e.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="do not share the KV blocks of a prompt prefix seen before (a shared system prompt, earlier "
                        "chat turns); by default they are kept by content and reused, and /metrics reports the "
                        "hit rate")
    e.add_argument("--prefill", choices=("chunked", "serial"), default="chunked",
                   help="chunked (default): at most --prefill-chunk prompt tokens per step, shortest remaining prompt "
                        "first, a long prompt in chunks beside the running decodes; serial: each new prompt whole, in "
                        "arrival order, before the next decoding step (the engine's first behaviour, for comparison)")
    e.add_argument("--prefill-chunk", type=positive_int, default=2048,
                   help="prompt tokens prefilled per engine step with --prefill chunked (default 2048; smaller chunks "
                        "interleave decodes more finely but cost output tokens/s, see bench/serve.py --mixed)")
    e.add_argument("--draft", default=None, metavar="MODEL|prompt-lookup",
                   help="speculative decoding for every request that can take it (no penalties, grammar or "
                        "logprobs): 'prompt-lookup' drafts tokens copied from the prompt and output so far (fast on "
                        "extract / quote / reformat requests), MODEL a small draft model with the same tokenizer; "
                        "the target checks the drafts in the batch's pass, so outputs are unchanged; /metrics "
                        "reports the acceptance rate")
    e.add_argument("--speculate", type=positive_int, default=4, metavar="K",
                   help="draft tokens per request per step with --draft (default 4)")
    e.add_argument("--max-queue", type=positive_int, default=256,
                   help="requests that may wait for a slot; beyond it the server answers 503 (default 256)")
    p.add_argument("--max-body-bytes", type=positive_int, default=4 * 1024 * 1024,
                   help="largest request body accepted (default 4 MiB)")
    a = p.add_argument_group("access")
    a.add_argument("--api-keys", default=None, metavar="FILE",
                   help="file of 'name:key' lines (optionally 'requests_per_minute=N tokens_per_day=N' after "
                        "each); without it no key is needed")
    a.add_argument("--rate-limit", type=positive_int, default=None, metavar="RPM",
                   help="requests per minute per key, for keys without their own (default: unlimited)")
    a.add_argument("--token-budget", type=positive_int, default=None, metavar="TOKENS",
                   help="prompt + completion tokens per key per 24 hours, for keys without their own")
    a.add_argument("--request-log", default=None, metavar="SQLITE",
                   help="SQLite file logging every request (default $LLMKIT_HOME/requests.sqlite)")
    a.add_argument("--no-request-log", action="store_true", help="log no requests")
    a.add_argument("--log-prompts", action="store_true",
                   help="also log prompt and completion text (PII such as e-mails and numbers is masked)")
    a.add_argument("--price-prompt", type=float, default=0.0, metavar="USD",
                   help="price per million prompt tokens, for the log's cost column")
    a.add_argument("--price-completion", type=float, default=0.0, metavar="USD",
                   help="price per million completion tokens")


def run_serve(args: argparse.Namespace) -> None:
    from ..apps.safety.presets import guard_names
    from ..serve import ServerSettings, build_server
    from ..serve.launch import bind

    guards = guards_spec(args.overrides, default="none")
    check_guard_args(guards, args)  # unknown names and missing classifier flags fail before the model loads
    for adapter in args.adapter:
        if "=" not in adapter:
            raise ValueError(f"--adapter {adapter}: give NAME=DIR (the name is how requests choose it)")
    settings = ServerSettings(
        name=args.name,
        adapters=[adapter.split("=", 1)[0] for adapter in args.adapter], host=args.host, port=args.port,
        max_batch=args.max_batch, kv_cache_tokens=args.kv_cache_tokens, block_size=args.block_size,
        prefix_cache=args.prefix_cache, prefill=args.prefill, prefill_chunk=args.prefill_chunk,
        draft=args.draft, speculate=args.speculate,
        max_queue=args.max_queue, max_body_bytes=args.max_body_bytes, api_keys=args.api_keys,
        rate_limit=args.rate_limit, token_budget=args.token_budget, request_log=args.request_log,
        log_requests=not args.no_request_log, log_prompts=args.log_prompts, price_prompt=args.price_prompt,
        price_completion=args.price_completion, log_level="info" if args.verbose else "warning", model=args.model,
        embedder=args.embedder, embed_precision=args.embed_precision)
    # the port is taken before the model loads: a busy one is refused at once, not after minutes of
    # loading, and never after the server was announced
    sock = bind(settings.host, settings.port)
    try:
        llm = load_llm(args)
        settings.guards = build_guard_set(guards, args, lambda: load_llm(args)) if guard_names(guards) else None
        server = build_server(llm, settings, sock)
    except BaseException:
        sock.close()
        raise
    print(server.summary(), file=sys.stderr, flush=True)
    server.run()
