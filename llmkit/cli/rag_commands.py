"""`llmkit rag index|ask|eval`: retrieval-augmented generation over your documents (`llmkit.apps.rag`)."""

from __future__ import annotations

import argparse
import math
import sys

from .commands import comma_list, positive_int


def unknown_weight(text: str) -> float:
    """--unknown-weight: a finite number, zero or more."""
    from ..apps.rag.retrieval import check_unknown_weight

    try:
        return check_unknown_weight(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("unknown_weight=", "")) from None


def add_rag_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="rag_verb", metavar="ACTION", required=True)
    i = sub.add_parser("index", help="load, chunk, embed and store documents (incremental: re-run after edits)",
                       description="Index documents into a store: a directory path is FAISS on disk (the embedded "
                                   "default), a postgresql:// URL is PostgreSQL with pgvector. Text, Markdown, HTML "
                                   "(boilerplate dropped) and PDF files are read; a file that fails is listed and "
                                   "the run goes on. A re-run indexes only what changed and removes what was deleted; "
                                   "an interrupted run resumes. Example: llmkit rag index --docs docs/ --store "
                                   "runs/idx  (or --docs stdlib: the Python standard library's documentation)")
    i.add_argument("--docs", required=True, help="a folder of documents, or 'stdlib'")
    i.add_argument("--store", required=True, help="a directory (FAISS) or a postgresql://user@host/db URL")
    i.add_argument("--embedder", default=None, help="the embedding model (default all-minilm-l6-v2, from the model "
                                                    "cache: llmkit pull all-minilm-l6-v2; or a /v1 URL)")
    i.add_argument("--kind", choices=["flat", "hnsw"], default="flat", help="FAISS index kind (default flat, exact)")
    i.add_argument("--chunking", choices=["recursive", "tokens"], default="recursive",
                   help="recursive (headings, paragraphs, sentences; default) or fixed token windows")
    i.add_argument("--chunk-size", type=positive_int, default=254,
                   help="tokens of the embedder per chunk (default 254: all-MiniLM-L6-v2 reads 256 with its 2 special ones)")
    i.add_argument("--overlap", type=int, default=None,
                   help="tokens shared by neighbouring chunks (default 0 for recursive chunks, 32 for token windows)")
    i.add_argument("--keep-missing", action="store_true",
                   help="keep the chunks of documents that are no longer in --docs (default: delete them)")
    _common(i)

    a = sub.add_parser("ask", help="answer a question from the store, streamed, with numbered citations",
                       description="Retrieve the passages that best match the question and have the model answer "
                                   "from them, citing [1], [2], ...; the citations are listed with their source and "
                                   "position. When the evidence (the best passage's similarity, less --unknown-weight "
                                   "x the share of the question's words that no passage contains) is under "
                                   "--threshold, the answer is 'Not in the documents.' without asking the model. "
                                   "Example: llmkit rag ask --store runs/idx "
                                   "--model smollm2-135m-instruct \"How do I read a CSV file?\"")
    a.add_argument("question")
    a.add_argument("--store", required=True, help="the store `llmkit rag index` wrote (directory or URL)")
    a.add_argument("--model", "-m", required=True, help="the model that answers: path, cached name or /v1 URL")
    a.add_argument("--api-key", default=None, help="for a --model URL")
    a.add_argument("--embedder", default=None, help="default: the one the store was built with")
    a.add_argument("-k", type=positive_int, default=5, help="passages to retrieve (default 5)")
    a.add_argument("--mode", choices=["dense", "bm25", "hybrid"], default="hybrid", help="default hybrid")
    a.add_argument("--threshold", type=float, default=None,
                   help="answer 'Not in the documents.' when the evidence is under this (e.g. the value "
                        "`llmkit rag eval --tune` chose)")
    a.add_argument("--unknown-weight", type=unknown_weight, default=0.0,
                   help="how much the share of question words that no passage contains lowers the evidence "
                        "(default 0: the similarity alone; `llmkit rag eval --tune` chooses it with the threshold)")
    a.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="only passages whose metadata has KEY=VALUE (repeatable), e.g. format=pdf; a VALUE of digits "
                        "is a number, true/false a boolean (quote it as VALUE='\"2024\"' for the string)")
    a.add_argument("--max-new-tokens", type=positive_int, default=256)
    a.add_argument("--mmr", type=float, default=None, metavar="LAMBDA", help="diversify with MMR (e.g. 0.7)")
    a.add_argument("--rerank", action="store_true", help="rescore the candidates with the model (slower)")
    _common(a)

    e = sub.add_parser("eval", help="recall@1/5/10 and MRR per retriever on labelled questions",
                       description="Measure retrieval on questions labelled with the documents that answer them "
                                   "(JSONL rows {id, question, docs, answer, answerable}, or the shipped set over the "
                                   "standard library: builtin:rag-stdlib:test, tuned on builtin:rag-stdlib:dev). "
                                   "Writes results.json and report.md (llmkit compare reads them). Example: llmkit "
                                   "rag eval --store runs/stdlib --questions builtin:rag-stdlib:test --tune "
                                   "builtin:rag-stdlib:dev --out runs/rag-eval")
    e.add_argument("--store", required=True)
    e.add_argument("--questions", required=True, help="a JSONL file, or builtin:rag-stdlib:dev|test")
    e.add_argument("--out", "-o", required=True, help="the run directory to write")
    e.add_argument("--retrievers", default="bm25,dense,hybrid",
                   help="comma-separated among bm25, dense, hybrid, and for comparison bow, tfidf, word2vec "
                        "(default bm25,dense,hybrid)")
    e.add_argument("--tune", default=None,
                   help="questions to choose the not-found threshold and unknown-word weight on (never --questions)")
    e.add_argument("--threshold", type=float, default=None, help="a fixed not-found threshold instead of --tune")
    e.add_argument("--unknown-weight", type=unknown_weight, default=None,
                   help="with --threshold: the fixed weight of unknown question words (default 0)")
    e.add_argument("--embedder", default=None, help="default: the one the store was built with")
    e.add_argument("--model", "-m", default=None,
                   help="also measure answers: the model answers each question with the retrieved passages and "
                        "closed-book (containment of the gold answer, citation hits); written to OUT/answers")
    e.add_argument("-k", type=positive_int, default=5, help="passages per answer with --model (default 5)")
    e.add_argument("--batch-size", type=positive_int, default=16, help="answers decoded together (default 16)")
    _common(e)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="show progress logs")


def _where(items: list[str]) -> dict[str, object] | None:
    where: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--where {item!r}: give KEY=VALUE, e.g. --where format=pdf")
        if value in ("true", "false"):
            where[key] = value == "true"
        elif value.lstrip("-").isdigit():
            where[key] = int(value)
        else:
            where[key] = value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value
    return where or None


def run_rag(args: argparse.Namespace) -> int:
    return {"index": _index, "ask": _ask, "eval": _eval}[args.rag_verb](args)


def _index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..apps.rag.indexing import ChunkSettings
    from ..apps.rag.workflow import build_index

    settings = ChunkSettings(args.chunking, args.chunk_size, args.overlap)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="documents", unit="doc", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        report = build_index(args.docs, args.store, args.embedder, kind=args.kind, settings=settings,
                             delete_missing=not args.keep_missing, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    from ..apps.rag.stores import redact_url

    print(f"{redact_url(args.store)}: {report.summary()}")
    for path, reason in report.failures[:20]:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    if len(report.failures) > 20:
        print(f"  ... and {len(report.failures) - 20} more", file=sys.stderr)
    return 0


def _ask(args: argparse.Namespace) -> int:
    from ..apps.rag.answer import answer_stream
    from ..apps.rag.workflow import open_retriever
    from ..infer.llm import load

    retriever = open_retriever(args.store, args.embedder, mode=args.mode, mmr_lambda=args.mmr,
                               unknown_weight=args.unknown_weight)
    llm = load(args.model, api_key=args.api_key)
    if args.rerank:
        retriever.reranker = llm
    stream = answer_stream(llm, retriever, args.question, k=args.k, threshold=args.threshold,
                           where=_where(args.where), max_new_tokens=args.max_new_tokens)
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    result = stream.result
    if result is not None and result.citations:
        cited = set(result.cited)
        print("\nPassages:" if not cited else "\nCited:")
        for c in result.citations:
            if not cited or c.number in cited:
                print(f"  [{c.number}] {c.where()} (score {c.score:.3f})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..apps.rag.evaluate import retrieval_table
    from ..apps.rag.workflow import evaluate_store

    retrievers = comma_list(args.retrievers)
    with tqdm(desc="questions", unit="q", file=sys.stderr) as bar:
        run, chosen = evaluate_store(args.store, args.questions, retrievers, embedder=args.embedder, tune=args.tune,
                                     threshold=args.threshold, unknown_weight=args.unknown_weight,
                                     progress=bar.update)
    if not args.model:
        chosen["retriever"].store.close()
    table = retrieval_table(run)
    rule = "no not-found rule (give --tune or --threshold)"
    if chosen.get("threshold") is not None:
        # rounded down: the tuned threshold is a kept question's own evidence, which rounding up would refuse
        shown = f"{math.floor(chosen['threshold'] * 1e4) / 1e4:.4f}"
        rule = (f"not found under evidence {shown}, unknown-word weight {chosen['unknown_weight']:.2f}"
                f" ({'tuned on ' + chosen['tuned_on'] if 'tuned_on' in chosen else 'given'}): llmkit rag ask "
                f"--threshold {shown} --unknown-weight {chosen['unknown_weight']:.2f} ...")
    notes = f"## Retrieval\n\n{table}\n\n{rule}\n"
    run.write(args.out, notes=notes)
    print(table)
    print(rule)
    print(f"wrote {args.out}/results.json and report.md")
    if args.model:
        from pathlib import Path

        from ..apps.prompt_eval import strategy_table
        from ..apps.rag.workflow import evaluate_answers
        from ..infer.llm import load

        try:
            answers = evaluate_answers(load(args.model), chosen["retriever"], args.questions, chosen.get("threshold"),
                                       k=args.k, batch_size=args.batch_size, progress=True)
        finally:
            chosen["retriever"].store.close()
        table = strategy_table(answers)
        answers.write(Path(args.out) / "answers", notes=table)
        rag = next(r for key, r in answers.tasks.items() if key.endswith("/rag") and "-unanswerable" not in key)
        print(table)
        print(f"citation hits {rag.metrics['citation_hit']:.3f}; wrote {args.out}/answers")
    return 0
