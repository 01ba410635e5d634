"""Documents to cited answers with the real all-MiniLM-L6-v2: `llmkit rag index` (incremental, resumable,
into FAISS and into a real PostgreSQL), retrieval (dense equal to sentence-transformers + FAISS on the
same chunks; BM25; hybrid; filters; a mismatched embedder refused), answers with citations that map
back to their source, and `llmkit rag eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmkit.apps.context import ContextOverflow
from llmkit.apps.rag.answer import NOT_FOUND, answer_stream, ask, cited_numbers
from llmkit.apps.rag.embedding import EmbeddingCache, embed_texts
from llmkit.apps.rag.indexing import ChunkSettings, index_documents
from llmkit.apps.rag.loaders import load_directory
from llmkit.apps.rag.retrieval import Retriever
from llmkit.apps.rag.stores import StoreMismatch, open_store
from llmkit.cli.main import main
from tests.apps.scripted import ScriptedLLM

DOCS = {
    "csv.md": "# CSV files\n\nUse csv.reader to read rows from a comma-separated file; each row comes back as a list "
              "of strings.\n\n## Writing\n\ncsv.writer writes rows; call writerow for each one.\n",
    "dates.html": "<html><head><title>Dates</title></head><body><nav>Home | Blog | Contact</nav><article><h1>Days "
                  "between dates</h1><p>Subtract two date objects: the result is a timedelta whose days attribute "
                  "counts the days between them.</p></article><footer>Copyright 2026</footer></body></html>",
    "shell.txt": "subprocess.run starts a command, waits for it to finish and returns a CompletedProcess with its "
                 "return code and output.",
    "zip.txt": "zipfile.ZipFile opens a ZIP archive; extractall unpacks every member into a folder.",
}


class FP32:
    """all-MiniLM-L6-v2 through llmkit at fp32 (its default computes in bf16 on CPUs where that is
    fast), for comparisons with sentence-transformers' fp32 vectors."""

    def __init__(self, llm):
        self.llm, self.name, self.tokenizer, self.embedding_dim = llm, llm.name, llm.tokenizer, llm.embedding_dim

    def embed(self, texts):
        return self.llm.embed(texts, precision="fp32")

    def tokenize(self, text, add_special_tokens=True):
        return self.llm.tokenize(text, add_special_tokens)


@pytest.fixture(scope="module")
def embedder(minilm):
    import llmkit

    return FP32(llmkit.load(minilm.path))


def write_docs(root, docs=DOCS):
    root.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def stored(store):
    return sorted((c.chunk_id, c.text) for c in store.chunks())


@pytest.fixture(params=["faiss", "pgvector"])
def store_spec(request, tmp_path):
    if request.param == "faiss":
        return str(tmp_path / "idx")
    return request.getfixturevalue("postgres")  # each test its own table


def test_index_is_incremental_and_an_interrupted_run_resumes(tmp_path, embedder, store_spec, request):
    table = {"table": f"t_{abs(hash(request.node.name)) % 10**8}"} if store_spec.startswith("postgres") else {}
    docs = write_docs(tmp_path / "docs")
    settings = ChunkSettings(size=32)
    cache = EmbeddingCache(tmp_path / "emb.db")
    store = open_store(store_spec, "all-minilm-l6-v2", 384, create=True, **table)
    calls = []
    real_embed = embedder.embed

    class Crashing:
        name, tokenizer, embedding_dim = embedder.name, embedder.tokenizer, 384

        def embed(self, texts):
            calls.append(len(texts))
            if len(calls) == 2:
                raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of the run
            return real_embed(texts)

    with pytest.raises(KeyboardInterrupt):
        index_documents(store, load_directory(docs).documents, Crashing(), settings, cache=cache, batch_chunks=1)
    partial = store.document_hashes()
    assert 0 < len(partial) < len(DOCS)  # some documents whole, the rest not started
    for doc_id in partial:  # each stored document has all of its chunks
        assert [c for c in stored(store) if c[0].startswith(doc_id + "#")]
    report = index_documents(store, load_directory(docs).documents, embedder, settings, cache=cache)
    assert report.unchanged == len(partial) and report.added == len(DOCS) - len(partial)
    complete = stored(store)
    store.close()

    clean = open_store(str(tmp_path / "clean"), "all-minilm-l6-v2", 384, create=True)
    index_documents(clean, load_directory(docs).documents, embedder, settings)
    assert stored(clean) == complete  # the resumed store is the store a clean run builds

    # edit one document and delete another: only those change
    (docs / "shell.txt").write_text("subprocess.Popen starts a process without waiting for it.", encoding="utf-8")
    (docs / "zip.txt").unlink()
    store = open_store(store_spec, **table)
    report = index_documents(store, load_directory(docs).documents, embedder, settings, cache=cache)
    assert (report.added, report.updated, report.unchanged, report.deleted) == (0, 1, 2, 1)
    after = stored(store)
    untouched = [c for c in complete if not c[0].startswith(("shell.txt#", "zip.txt#"))]
    assert [c for c in after if not c[0].startswith("shell.txt#")] == untouched
    assert [t for i, t in after if i.startswith("shell.txt#")] == ["subprocess.Popen starts a process without "
                                                                     "waiting for it."]
    assert report.cached == 0 and len(cache) > 0
    store.close()


def test_dense_retrieval_equals_sentence_transformers_and_faiss_on_the_same_chunks(tmp_path, embedder, minilm):
    from tests.peers import peer

    sentence_transformers = peer("sentence_transformers")
    faiss = peer("faiss")
    store = open_store(str(tmp_path / "idx"), "all-minilm-l6-v2", 384, create=True)
    index_documents(store, load_directory(write_docs(tmp_path / "docs")).documents, embedder, ChunkSettings(size=24))
    chunks = list(store.chunks())
    st = sentence_transformers.SentenceTransformer(str(minilm.path), device="cpu")
    vectors = st.encode([c.text for c in chunks], normalize_embeddings=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.asarray(vectors, dtype=np.float32))
    retriever = Retriever(store, embedder, mode="dense")
    for question in ("How do I read rows from a CSV file?", "number of days between two dates",
                     "run a shell command and wait", "unpack an archive"):
        q = st.encode([question], normalize_embeddings=True)
        scores, ids = index.search(np.asarray(q, dtype=np.float32), 3)
        ours = retriever.search(question, k=3)
        assert [s.chunk.chunk_id for s in ours.chunks] == [chunks[i].chunk_id for i in ids[0]]
        np.testing.assert_allclose([s.score for s in ours.chunks], scores[0], atol=1e-4)
    # the HTML page's navigation and footer were dropped as boilerplate
    assert not any("Contact" in c.text or "Copyright" in c.text for c in chunks)


def test_bm25_hybrid_filters_and_a_mismatched_embedder(tmp_path, embedder, tiny_bert_dir):
    import llmkit

    store = open_store(str(tmp_path / "idx"), "all-minilm-l6-v2", 384, create=True)
    index_documents(store, load_directory(write_docs(tmp_path / "docs")).documents, embedder, ChunkSettings(size=32))
    retriever = Retriever(store, embedder)
    found = retriever.search("ZipFile extractall", k=2, mode="bm25")
    assert found.chunks[0].chunk.doc_id == "zip.txt"
    hybrid = retriever.search("days between two dates", k=4)
    assert hybrid.chunks[0].chunk.doc_id == "dates.html" and set(hybrid.rankings) == {"dense", "bm25"}
    only_md = retriever.search("read rows", k=3, where={"format": "markdown"})
    assert only_md.chunks and {s.chunk.doc_id for s in only_md.chunks} == {"csv.md"}
    assert retriever.search("read rows", k=3, where={"format": "markdown"}, mode="bm25").chunks
    other = llmkit.load(tiny_bert_dir)
    with pytest.raises(StoreMismatch, match="all-minilm-l6-v2.*384"):
        Retriever(store, other)


def test_answers_cite_numbered_passages_that_map_to_their_source(tmp_path, embedder):
    store = open_store(str(tmp_path / "idx"), "all-minilm-l6-v2", 384, create=True)
    index_documents(store, load_directory(write_docs(tmp_path / "docs")).documents, embedder, ChunkSettings(size=32))
    retriever = Retriever(store, embedder, mode="dense")
    llm = ScriptedLLM([["Subtract the dates", "; use .days [1]", " (see also [9])."]])
    stream = answer_stream(llm, retriever, "How many days are there between two dates?", k=2, budget=4000)
    pieces = list(stream)
    result = stream.result
    assert "".join(pieces).strip() == result.text and result.status == "answered"
    assert result.cited == [1]  # [9] was never shown
    c = result.citations[0]
    assert c.doc_id == "dates.html" and c.source.endswith("dates.html")
    text = next(d.text for d in load_directory(tmp_path / "docs").documents if d.doc_id == "dates.html")
    assert "timedelta" in text[c.start:c.end]  # the position maps back into the document
    system = llm.calls[0][0][0]["content"]
    assert "[1] (Dates) # Days between dates" in system and "cite" in system.lower()  # the page title, then the text
    # under the threshold the model is not asked
    quiet = ScriptedLLM([])
    refused = ask(quiet, retriever, "How do I train a neural network in TensorFlow?", threshold=0.9, budget=4000)
    assert refused.status == "not_found" and refused.text == NOT_FOUND and quiet.calls == []
    # words that no chunk contains lower the evidence: above the similarity threshold, still refused
    keras = "How do I fine-tune BERT with Keras?"
    plain = retriever.search(keras, k=2)
    assert plain.unknown is None and plain.evidence == plain.similarity  # weight 0: the similarity alone
    just_under = plain.similarity - 0.01
    assert ask(ScriptedLLM([["No idea."]]), retriever, keras, threshold=just_under, budget=4000).status == "answered"
    weighted = Retriever(store, embedder, mode="dense", unknown_weight=0.5)
    found = weighted.search(keras, k=2)
    assert found.unknown >= 0.5 and found.evidence == pytest.approx(found.similarity - 0.5 * found.unknown)
    assert ask(ScriptedLLM([]), weighted, keras, threshold=just_under, budget=4000).status == "not_found"
    known = weighted.search("How many days are there between two dates?", k=2)
    assert known.unknown == 0.0 and known.evidence == known.similarity
    # the words are the store's as it is now: a document indexed since is seen without refresh()
    from llmkit.apps.rag.records import Document

    index_documents(store, [Document("keras.txt", "Keras fine-tune BERT: a tutorial.", {"source": "keras.txt"})],
                    embedder, ChunkSettings(size=32), delete_missing=False)
    assert weighted.search(keras, k=2).unknown < found.unknown
    # an empty store has no similarity to lower: "not in the documents", not an error
    empty = Retriever(open_store(str(tmp_path / "empty"), "all-minilm-l6-v2", 384, create=True), embedder,
                      mode="dense", unknown_weight=0.5)
    assert ask(ScriptedLLM([]), empty, keras, threshold=0.3, budget=4000).status == "not_found"
    assert cited_numbers("see [2, 3] and [3][1]", 3) == [2, 3, 1]
    # a question longer than the budget is refused with the counts, not cut silently
    with pytest.raises(ContextOverflow, match="latest turn takes .* over the budget of 50 tokens"):
        ask(ScriptedLLM([]), retriever, "dates " * 200, budget=50)


def test_llmkit_rag_index_ask_and_eval(tmp_path, minilm, tiny_dir, capsys):
    docs = write_docs(tmp_path / "docs")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    store = tmp_path / "idx"
    assert main(["rag", "index", "--docs", str(docs), "--store", str(store), "--embedder", str(minilm.path),
                 "--chunk-size", "48"]) == 0
    out, err = capsys.readouterr()
    assert "4 added" in out and "broken.pdf" in err  # the bad file is listed, the run went on
    assert main(["rag", "index", "--docs", str(docs), "--store", str(store), "--embedder", str(minilm.path),
                 "--chunk-size", "48"]) == 0
    assert "0 added, 0 updated, 4 unchanged" in capsys.readouterr().out
    assert main(["rag", "ask", "--store", str(store), "--embedder", str(minilm.path), "--model", str(tiny_dir),
                 "--max-new-tokens", "8", "-k", "2", "How do I read a CSV file?"]) == 0
    out = capsys.readouterr().out
    assert ("Cited:" in out or "Passages:" in out) and "csv.md" in out
    # --unknown-weight: a question about what the documents never name is refused above the threshold
    keras = ["--threshold", "-0.5", "--max-new-tokens", "4", "How do I fine-tune BERT with Keras?"]
    common = ["rag", "ask", "--store", str(store), "--embedder", str(minilm.path), "--model", str(tiny_dir)]
    assert main(common + keras) == 0 and NOT_FOUND not in capsys.readouterr().out
    assert main(common + ["--unknown-weight", "2"] + keras) == 0 and NOT_FOUND in capsys.readouterr().out
    questions = tmp_path / "qa.jsonl"
    rows = [{"id": "a", "question": "How can I read a CSV file row by row?", "docs": ["csv.md"], "answer": "csv.reader",
             "answerable": True},
            {"id": "b", "question": "How do I unpack a zip archive?", "docs": ["zip.txt"], "answer": "extractall",
             "answerable": True},
            {"id": "c", "question": "How do I fine-tune BERT with Keras?", "docs": [], "answer": None,
             "answerable": False}]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out_dir = tmp_path / "eval"
    assert main(["rag", "eval", "--store", str(store), "--embedder", str(minilm.path), "--questions",
                 str(questions), "--out", str(out_dir), "--threshold", "0.3", "--retrievers", "bm25,dense,hybrid,tfidf",
                 "--model", str(tiny_dir), "-k", "2"]) == 0
    results = json.loads((out_dir / "results.json").read_text())
    assert set(results["tasks"]) == {"qa/bm25", "qa/dense", "qa/hybrid", "qa/tfidf", "qa-unanswerable/bm25",
                                     "qa-unanswerable/dense", "qa-unanswerable/hybrid"}  # tf-idf does not refuse
    dense = results["tasks"]["qa/dense"]
    assert dense["metrics"]["recall@5"] == 1.0 and dense["metrics"]["n"] == 2
    assert dense["metrics"]["not_found_correct"] == 1.0  # the Keras question is under the threshold
    assert results["tasks"]["qa-unanswerable/dense"]["samples"][0]["score"] == 1.0
    assert "recall@5" in (out_dir / "report.md").read_text()
    assert main(["compare", str(out_dir), str(out_dir)]) == 0
    answers = json.loads((out_dir / "answers" / "results.json").read_text())
    assert set(answers["tasks"]) == {"qa/closed-book", "qa/rag", "qa-unanswerable/rag"}
    assert answers["tasks"]["qa/rag"]["metrics"]["n"] == 2  # the answerable ones, scored both ways
    assert answers["tasks"]["qa-unanswerable/rag"]["samples"][0]["reply"] == NOT_FOUND
    # without a threshold there is no refusal to score, and the run still completes
    assert main(["rag", "eval", "--store", str(store), "--embedder", str(minilm.path), "--questions",
                 str(questions), "--out", str(tmp_path / "eval2"), "--retrievers", "dense"]) == 0
    assert set(json.loads((tmp_path / "eval2" / "results.json").read_text())["tasks"]) == {"qa/dense"}
    # chosen on other questions: the threshold and the unknown-word weight, printed for rag ask
    tune = tmp_path / "tune.jsonl"
    tune.write_text(json.dumps({"id": "t1", "question": "What does ZipFile.extractall do?", "docs": ["zip.txt"],
                                "answer": "extract", "answerable": True}) + "\n" +
                    json.dumps({"id": "t2", "question": "How do I train a Keras model on a GPU?", "docs": [],
                                "answer": None, "answerable": False}) + "\n", encoding="utf-8")
    assert main(["rag", "eval", "--store", str(store), "--embedder", str(minilm.path), "--questions", str(questions),
                 "--tune", str(tune), "--out", str(tmp_path / "eval4"), "--retrievers", "dense"]) == 0
    out = capsys.readouterr().out
    assert "tuned on" in out and "llmkit rag ask --threshold" in out and "--unknown-weight" in out
    tuned = json.loads((tmp_path / "eval4" / "results.json").read_text())["tasks"]["qa/dense"]["metrics"]
    assert tuned["not_found_correct"] == 1.0 and "answerable_kept" in tuned  # the Keras question is refused
    # the threshold is never chosen on the measured questions
    assert main(["rag", "eval", "--store", str(store), "--embedder", str(minilm.path), "--questions",
                 str(questions), "--tune", str(questions), "--out", str(tmp_path / "eval3")]) != 0
    assert "shares 3 question(s)" in capsys.readouterr().err


def test_passages_dropped_for_the_budget_leave_no_gap_in_the_citation_numbers():
    from llmkit.apps.rag.answer import finish, passage_text, prepare
    from llmkit.apps.rag.records import Chunk, ScoredChunk
    from llmkit.apps.rag.retrieval import Retrieval

    # retrieved in this order, but not by score (as after MMR or a reranker): the budget drops the
    # lowest-scoring passages wherever they stand, and the kept ones are numbered 1.. as shown
    scores = [0.5, 0.9, 0.4, 0.8]
    found = [ScoredChunk(Chunk(f"c{i}", f"doc{i}", 0, f"passage {i}: " + "words about dates " * 8, {}), score)
             for i, score in enumerate(scores)]

    class Fixed:
        def search(self, question, k=5, where=None):
            return Retrieval(question, found[:k], 0.9, "dense")

    def fitted(budget):
        try:
            return prepare(ScriptedLLM([]), Fixed(), "How many days?", k=4, max_new_tokens=16, budget=budget)
        except ContextOverflow:  # not even the question fits
            return None

    full = fitted(4000)
    assert [(c.number, c.chunk_id) for c in full.citations] == [(1, "c0"), (2, "c1"), (3, "c2"), (4, "c3")]
    two = next(p for p in map(fitted, range(60, 4000, 5)) if p is not None and len(p.citations) >= 2)
    assert [(c.number, c.chunk_id) for c in two.citations] == [(1, "c1"), (2, "c3")]  # the best two, in order
    system = two.messages[0]["content"]
    for c, kept in zip(two.citations, (found[1], found[3])):
        assert f"[{c.number}] {passage_text(kept)}" in system and c.score == kept.score  # the number the model saw
    assert "[3]" not in system and "passage 0" not in system and "passage 2" not in system
    reply = finish(two, "See [2] and [3].")
    assert reply.cited == [2]  # a number beyond those shown is not a citation


def test_the_default_embedder_must_be_pulled_first(tmp_path, monkeypatch):
    from llmkit.apps.rag.embedding import EmbedderError, default_embedder

    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(EmbedderError, match="llmkit pull all-minilm-l6-v2"):
        default_embedder()
    assert main(["rag", "index", "--docs", str(write_docs(tmp_path / "docs")), "--store", str(tmp_path / "idx")]) != 0


def test_cache_keep_and_refusals(tmp_path, embedder):
    """The cache serves a second store; another embedder cannot write into a store; a file that fails
    to load keeps its chunks; an answerable question above the threshold is answered."""
    from llmkit.apps.rag.workflow import build_index

    docs = write_docs(tmp_path / "docs")
    cache = EmbeddingCache(tmp_path / "emb.db")
    first = open_store(str(tmp_path / "a"), "all-minilm-l6-v2", 384, create=True)
    index_documents(first, load_directory(docs).documents, embedder, ChunkSettings(size=32), cache=cache)

    class Counting(type(embedder)):
        calls = 0

        def embed(self, texts):
            Counting.calls += 1
            return super().embed(texts)

    second = open_store(str(tmp_path / "b"), "all-minilm-l6-v2", 384, create=True)
    report = index_documents(second, load_directory(docs).documents, Counting(embedder.llm), ChunkSettings(size=32),
                             cache=cache)
    assert Counting.calls == 0 and report.cached == report.chunks > 0  # every vector read back, none made
    assert stored(second) == stored(first)

    class Other:
        name, tokenizer, embedding_dim = "another-embedder", embedder.tokenizer, 384

        def embed(self, texts):
            return np.ones((len(texts), 384), np.float32)

    with pytest.raises(StoreMismatch, match="another-embedder"):
        index_documents(first, load_directory(docs).documents, Other(), ChunkSettings(size=32))

    store = str(tmp_path / "c")
    build_index(docs, store, embedder, settings=ChunkSettings(size=32))
    (docs / "zip.txt").write_bytes(b"\x00\x01binary now")  # unreadable today: not a deleted document
    report = build_index(docs, store, embedder, settings=ChunkSettings(size=32))
    assert report.deleted == 0 and any(path.endswith("zip.txt") for path, _ in report.failures)
    assert any(c.doc_id == "zip.txt" for c in open_store(store).chunks())

    retriever = Retriever(open_store(store), embedder, mode="dense")
    llm = ScriptedLLM([["Use csv.reader [1]."]])
    assert ask(llm, retriever, "How do I read rows from a CSV file?", threshold=0.3, budget=4000).status == "answered"


def test_a_server_embeds_for_the_store_and_rerank_and_mmr_reorder(tmp_path, embedder):
    """A store built with the local model is searched through llmkit serve's /v1/embeddings with the
    same results; an LLM reranker and MMR change the order as they should."""
    from llmkit.apps.rag.records import ScoredChunk
    from llmkit.apps.rag.retrieval import rerank
    from llmkit.infer.remote import RemoteLLM
    from llmkit.infer.scoring import LogLikelihood
    from llmkit.serve import ServerSettings, build_server
    from tests.serve.conftest import Running

    store = open_store(str(tmp_path / "idx"), "all-minilm-l6-v2", 384, create=True)
    index_documents(store, load_directory(write_docs(tmp_path / "docs")).documents, embedder, ChunkSettings(size=24))
    local = Retriever(store, embedder, mode="dense")
    built = build_server(embedder.llm, ServerSettings(log_requests=False, embed_precision="fp32"))
    with Running(built.app) as running:
        remote = Retriever(store, RemoteLLM(running.url + "/v1"), mode="dense")
        for q in ("number of days between two dates", "unpack an archive"):
            a, b = local.search(q, k=3), remote.search(q, k=3)
            assert [s.chunk.chunk_id for s in a.chunks] == [s.chunk.chunk_id for s in b.chunks]
            np.testing.assert_allclose([s.score for s in a.chunks], [s.score for s in b.chunks], atol=1e-5)

    class Judge:  # says "yes" to the passage about ZIP archives only
        def loglikelihood(self, requests):
            return [LogLikelihood(-0.1 if ("ZipFile" in ctx) == (cont == " yes") else -5.0, True, 1)
                    for ctx, cont in requests]

    found = local.search("how do I read files", k=4).chunks
    reranked = rerank(Judge(), "how do I read files", found)
    assert reranked[0].chunk.doc_id == "zip.txt" and reranked[0].score == pytest.approx(4.9)
    assert {s.chunk.chunk_id for s in reranked} == {s.chunk.chunk_id for s in found}
    assert isinstance(reranked[0], ScoredChunk)

    relevance = Retriever(store, embedder, mode="dense", mmr_lambda=1.0).search("csv rows", k=3).chunks
    assert [s.chunk.chunk_id for s in relevance] == [s.chunk.chunk_id for s in local.search("csv rows", k=3).chunks]
    diverse = Retriever(store, embedder, mode="dense", mmr_lambda=0.0).search("csv rows", k=3).chunks
    assert diverse[0].chunk.chunk_id == relevance[0].chunk.chunk_id  # the first pick is the most relevant
    assert [s.chunk.chunk_id for s in diverse] != [s.chunk.chunk_id for s in relevance]


def test_llmkit_rag_on_a_postgresql_url_and_an_unreachable_one(tmp_path, minilm, postgres, capsys):
    from tests.apps.scripted import closed_port

    docs = write_docs(tmp_path / "docs")
    url = postgres  # the CLI's default table, llmkit_chunks: no other test uses it
    assert main(["rag", "index", "--docs", str(docs), "--store", url, "--embedder", str(minilm.path),
                 "--chunk-size", "48"]) == 0
    assert "4 added" in capsys.readouterr().out
    questions = tmp_path / "qa.jsonl"
    questions.write_text(json.dumps({"id": "a", "question": "How do I unpack a zip archive?", "docs": ["zip.txt"],
                                     "answer": "extractall", "answerable": True}) + "\n", encoding="utf-8")
    assert main(["rag", "eval", "--store", url, "--embedder", str(minilm.path), "--questions", str(questions),
                 "--out", str(tmp_path / "eval"), "--retrievers", "dense,hybrid"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["tasks"]["qa/dense"]["metrics"]["recall@1"] == 1.0
    down = f"postgresql://alice:s3cret@127.0.0.1:{closed_port()}/db"
    assert main(["rag", "index", "--docs", str(docs), "--store", down, "--embedder", str(minilm.path)]) != 0
    err = capsys.readouterr().err
    assert "cannot connect to PostgreSQL" in err and "s3cret" not in err and "Traceback" not in err


def test_evaluate_store_chooses_the_weight_on_the_tuning_questions_and_measures_with_it(tmp_path):
    """The rule is chosen on `tune` and applied to the measured questions; a fixed rule is checked."""
    from llmkit.apps.rag.records import Chunk, ScoredChunk
    from llmkit.apps.rag.retrieval import Retrieval
    from llmkit.apps.rag.workflow import evaluate_store

    # (similarity, unknown share) per question: by similarity alone the unanswerable "pandas" and
    # "django" questions rank above an answerable one; their unknown words set them apart
    table = {"csv rows": (0.70, 0.0), "zip extract": (0.60, 0.2), "dates": (0.55, 0.0),
             "pandas frame": (0.65, 0.5), "django model": (0.58, 0.6), "linux kernel": (0.40, 0.0),
             "json dump": (0.66, 0.0), "numpy array": (0.62, 0.5)}
    chunk = ScoredChunk(Chunk("a#0", "a", 0, "text", {}), 1.0)

    class Store:
        def chunks(self):
            return iter([chunk.chunk])

    class Fake:
        store, embedder, unknown_weight = Store(), type("E", (), {"name": "fake-embedder"})(), 0.0

        def search(self, question, k=5, mode=None, where=None):
            similarity, unknown = table[question]
            return Retrieval(question, [chunk], similarity, "dense", {}, unknown, self.unknown_weight)

        def unknown_share(self, question):
            return table[question][1]

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"id": q, "question": q, "docs": ["a"] if a else [], "answer": None,
                                            "answerable": a}) + "\n" for q, a in rows), encoding="utf-8")
        return str(path)

    tune = write("tune.jsonl", [("csv rows", True), ("zip extract", True), ("dates", True), ("pandas frame", False),
                                ("django model", False), ("linux kernel", False)])
    measured = write("test.jsonl", [("json dump", True), ("numpy array", False)])
    fake = Fake()
    run, chosen = evaluate_store("unused", measured, ["dense"], tune=tune, retriever=fake)
    # worked in test_the_rule_weighs_unknown_words_only_when_they_separate_better: weight 0.25, threshold 0.55
    assert chosen["unknown_weight"] == 0.25 and chosen["threshold"] == pytest.approx(0.55)
    assert fake.unknown_weight == 0.25  # the retriever answers with the rule it was measured with
    dense = run.tasks["test/dense"].metrics
    # numpy: 0.62 - 0.25 x 0.5 = 0.495 < 0.55, refused; json: 0.66 kept (by similarity alone both kept)
    assert dense["unknown_weight"] == 0.25 and dense["not_found_correct"] == 1.0 and dense["answerable_kept"] == 1.0
    sample = run.tasks["test-unanswerable/dense"].samples[0]
    assert sample["similarity"] == 0.62 and sample["unknown"] == 0.5 and sample["evidence"] == pytest.approx(0.495)
    # a fixed rule: the weight only with a threshold, never both a threshold and tuning questions
    with pytest.raises(ValueError, match="give threshold= with it"):
        evaluate_store("unused", measured, ["dense"], unknown_weight=0.5, retriever=Fake())
    with pytest.raises(ValueError, match="not both"):
        evaluate_store("unused", measured, ["dense"], tune=tune, threshold=0.5, retriever=Fake())
    with pytest.raises(ValueError, match="finite number"):
        evaluate_store("unused", measured, ["dense"], threshold=0.5, unknown_weight=float("nan"), retriever=Fake())
    untouched = Fake()
    untouched.unknown_weight = 0.7
    evaluate_store("unused", measured, ["dense"], retriever=untouched)  # no rule: the retriever is left as it was
    assert untouched.unknown_weight == 0.7
