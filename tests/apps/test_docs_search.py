"""Keyword search: `KeywordIndex` (BM25 by bm25s) on small hand-made documents — ranking, errors,
save/load — and the standard-library documentation index: recall on questions whose answers a
person knows (written before looking at the index's output), what is and is not in it, that building
it imports no module outside the allowlists, and its cache under $LLMKIT_HOME."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmkit.apps import docs_search
from llmkit.apps.docs_search import DocsSearchError, Hit, KeywordIndex, stdlib_cache_dir, stdlib_docs_index
from tests.peers import peer

peer("bm25s")  # docs_search imports bm25s only when it builds or loads an index

# question -> the answers a Python programmer would give: a hit counts when its title is one of them
# or lies under one ("csv" accepts csv.reader; "shutil.copytree" accepts only itself)
QUERIES = {
    "read a CSV file": ["csv"],
    "parse command line arguments": ["argparse"],
    "compute a SHA-256 hash": ["hashlib"],
    "match a regular expression": ["re"],
    "days between two dates": ["datetime"],
    "serialize an object to JSON": ["json"],
    "copy a directory tree": ["shutil.copytree"],
    "run a subprocess and capture its output": ["subprocess"],
    "random sample from a list": ["random"],
    "unpack binary data from bytes": ["struct"],
    "compress a file with gzip": ["gzip"],
    "find files matching a wildcard pattern": ["glob", "fnmatch", "pathlib.Path.glob"],
    "download a web page from a URL": ["urllib.request"],
    "create a temporary directory": ["tempfile"],
    "count how many times each item occurs": ["collections.Counter"],
    "store data in an SQLite database": ["sqlite3"],
    "encode bytes as base64": ["base64"],
    "run functions in parallel threads": ["concurrent.futures", "threading"],
    "pretty print a nested data structure": ["pprint"],
    "measure the execution time of small code snippets": ["timeit"],
    "generate a unique identifier": ["uuid"],
    "join path components": ["os.path.join", "pathlib"],
    "write log messages to a file": ["logging"],
    "deep copy of an object": ["copy.deepcopy", "copy"],
    "parse an XML document": ["xml"],
    "read a configuration INI file": ["configparser"],
    "binary search in a sorted list": ["bisect"],
    "priority queue": ["heapq", "queue.PriorityQueue"],
    "square root of a number": ["math.sqrt", "math.isqrt", "cmath.sqrt"],
    "extract files from a zip archive": ["zipfile"],
    "what does the with statement do": ["with", "context-managers"],
    "current date and time in a time zone": ["datetime", "zoneinfo"],
}
FIRST_TEN = list(QUERIES)[:10]  # the issue's own examples: each must be in the top 5


def rank(hits: list[Hit], answers: list[str]) -> int | None:
    for r, hit in enumerate(hits, 1):
        if any(hit.title == a or hit.title.startswith(a + ".") for a in answers):
            return r
    return None


@pytest.fixture(scope="session")
def stdlib_index(tmp_path_factory) -> KeywordIndex:
    return stdlib_docs_index(tmp_path_factory.mktemp("indexes"))


def test_stdlib_questions_find_their_answers(stdlib_index):
    ranks = {q: rank(stdlib_index.search(q, 10), answers) for q, answers in QUERIES.items()}
    table = "\n".join(f"{r!s:>5}  {q}" for q, r in ranks.items())
    at1 = sum(r == 1 for r in ranks.values()) / len(ranks)
    at5 = sum(r is not None and r <= 5 for r in ranks.values()) / len(ranks)
    # measured on CPython 3.11.7, bm25s 0.3.16: recall@1 20/32 and recall@5 30/32 without a stemmer,
    # 22/32 and 30/32 with PyStemmer; the bounds leave 4 queries of room for other docstrings (another
    # Python patch release) while a broken tokenizer, title field or ranking falls far below them
    assert at5 >= 0.8 and at1 >= 0.5, f"recall@1 {at1:.2f}, recall@5 {at5:.2f}; ranks:\n{table}"
    assert all(ranks[q] is not None and ranks[q] <= 5 for q in FIRST_TEN), table


def test_stdlib_documents_cover_python_and_c_and_leave_out_the_deprecated(stdlib_index):
    by_title = {meta["title"]: (meta["kind"], text) for _, text, meta in stdlib_index.documents}
    expected = {"csv": "module", "csv.reader": "function",  # csv.reader is _csv's, re-exported
                "shutil.copytree": "function", "collections.Counter": "class", "collections.deque": "class",
                "random.Random.sample": "method", "os.listdir": "function",  # from posix
                "os.path.join": "function",  # posixpath, under the name users know
                "math.sqrt": "function", "sorted": "function", "str.split": "method", "with": "topic",
                "hashlib": "module"}  # a docstring given as __doc__ = "..."
    assert {t: by_title.get(t, ("missing",))[0] for t in expected} == expected
    assert by_title["shutil.copytree"][1].startswith("shutil.copytree(src, dst, ")
    assert by_title["str.split"][1].startswith("str.split(sep=None, maxsplit=-1)")  # no self
    # a static method of a C class has its own docstring, not staticmethod's
    assert "translation table" in by_title["str.maketrans"][1] and "static method" not in by_title["str.maketrans"][1]
    # a class without a docstring (csv.DictReader in 3.11) is there by its signature
    assert by_title["csv.DictReader"][0] == "class"
    assert by_title["csv.DictReader"][1].startswith("class csv.DictReader(f, fieldnames=None")
    titles = list(by_title)
    for gone in ("distutils", "lib2to3", "asyncore", "telnetlib", "test", "idlelib", "antigravity", "posixpath"):
        assert not [t for t in titles if t == gone or t.startswith(gone + ".")], gone
    ids = [doc_id for doc_id, _, _ in stdlib_index.documents]
    assert len(ids) == len(set(ids)) and len(ids) > 5000


def test_building_the_stdlib_documents_imports_only_allowed_modules():
    code = ("import contextlib, io, json, sys\n"
            "from llmkit.apps import docs_search\n"
            "before, out = set(sys.modules), io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    docs = docs_search.stdlib_documents()\n"
            "print(json.dumps({'new': sorted(set(sys.modules) - before), 'printed': out.getvalue()}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["printed"] == ""  # `this` prints the Zen of Python when imported
    new = set(report["new"])
    assert not new & {"antigravity", "this", "tkinter", "_tkinter", "turtle", "idlelib", "readline", "webbrowser",
                      "curses", "ctypes", "asyncio", "http.server", "smtplib", "unittest", "pydoc"}
    assert len(new) < 60, sorted(new)  # about 700 modules are read; only C ones (and what they need) are imported
    with pytest.raises(DocsSearchError, match="allowlists"):
        docs_search._import_c("antigravity")


# ----------------------------------------------------------------------------- KeywordIndex
DOCS = [
    ("d1", "The quick brown fox jumps over the lazy dog.", {"title": "foxes", "kind": "story"}),
    ("d2", "Parse comma separated values from a file into rows.", {"title": "csv"}),
    ("d3", "Compute the number of days between two calendar dates.", {"title": "dates"}),
    ("d4", "Dogs and cats living together.", {}),
    ("d5", "Nothing to see here.", {"title": "zebra crossing"}),
]


@pytest.fixture
def small() -> KeywordIndex:
    return KeywordIndex.build(DOCS, stemmer=None)


def test_search_ranks_by_bm25_and_returns_the_documents(small):
    hits = small.search("days between dates", k=3)
    assert [h.doc_id for h in hits] == ["d3"]  # the others share no word with the query
    assert hits[0] == Hit("d3", hits[0].score, "dates", DOCS[2][1], {"title": "dates"}) and hits[0].score > 0
    assert [h.doc_id for h in small.search("dog", k=5)] == ["d1"]  # no stemmer: "dogs" is another word
    assert [h.doc_id for h in small.search("zebra", k=5)] == ["d5"]  # the title is indexed with the text
    assert [h.title for h in small.search("dogs", k=5)] == ["d4"]  # no title: the id stands in
    assert small.search("the and of", k=5) == []  # stopwords only
    assert small.search("xylophone", k=5) == []
    assert len(small.search("the fox dog days rows cats zebra", k=100)) == 5  # k beyond the corpus is fine
    scores = [h.score for h in small.search("the fox dog days rows cats zebra", k=100)]
    assert scores == sorted(scores, reverse=True)
    small.search("fox", 1)[0].metadata["kind"] = "changed"  # a hit's metadata is a copy
    assert small.search("fox", 1)[0].metadata["kind"] == "story"


def test_unknown_terms_are_the_query_words_no_document_contains(small):
    # stopwords ("with", "and") are not words of the index, so they count for neither
    assert small.unknown_terms("Parse rows with pandas and numpy?") == (["pandas", "numpy"], 4)
    assert small.unknown_terms("days between dates") == ([], 3)
    # question words ask rather than name a topic: not counted though no document has them; a word
    # said twice counts once
    assert small.unknown_terms("How many rows does pandas parse, pandas?") == (["pandas"], 3)
    assert small.unknown_terms("Zebra crossing") == ([], 2)  # a title's words are known
    assert small.unknown_terms("the and of") == ([], 0)
    assert small.unknown_terms("   ") == ([], 0)


def test_bad_queries_and_documents_are_refused_by_name(small, tmp_path):
    for query in ("", "   "):
        with pytest.raises(DocsSearchError, match="the query is empty"):
            small.search(query)
    for k in (0, -1, True, 2.5):
        with pytest.raises(DocsSearchError, match=rf"k={k!r} must be a positive integer"):
            small.search("fox", k)
    with pytest.raises(DocsSearchError, match="no documents"):
        KeywordIndex.build([])
    with pytest.raises(DocsSearchError, match="'d1' appears more than once"):
        KeywordIndex.build(DOCS + [("d1", "again", {})])
    with pytest.raises(DocsSearchError, match="not a saved keyword index"):
        KeywordIndex.load(tmp_path)


def test_the_stemmer_is_pystemmer_where_installed():
    if docs_search.default_stemmer() is None:
        with pytest.raises(DocsSearchError, match="pip install PyStemmer"):
            KeywordIndex.build(DOCS, stemmer="english")
        assert KeywordIndex.build(DOCS).stemmer is None
    else:
        stemmed = KeywordIndex.build(DOCS)
        assert stemmed.stemmer == "english" and sorted(h.doc_id for h in stemmed.search("dog")) == ["d1", "d4"]


def test_save_and_load_give_identical_results(small, tmp_path):
    target = tmp_path / "idx"
    assert small.save(target) == target
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["format"] == docs_search.FORMAT_VERSION and manifest["documents"] == 5
    assert manifest["stemmer"] is None and manifest["stopwords"] == "en"
    loaded = KeywordIndex.load(target)
    for query in ("days between dates", "fox dog", "zebra", "the quick rows cats", "xylophone"):
        assert loaded.search(query, 5) == small.search(query, 5)
    other = KeywordIndex.build(DOCS[:2], stemmer=None, stopwords=["quick"])
    other.save(target)  # replaces the whole directory
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temporary or old directory left
    reloaded = KeywordIndex.load(target)
    assert len(reloaded) == 2 and reloaded.stopwords == ["quick"] and reloaded.search("quick") == []
    manifest["format"] = 99
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DocsSearchError, match="index format 99"):
        KeywordIndex.load(target)


# ----------------------------------------------------------------------------- the stdlib cache
def test_stdlib_index_is_cached_under_llmkit_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path))
    path = stdlib_cache_dir()
    v = sys.version_info
    assert path.parent == tmp_path / "indexes" and f"{v.major}.{v.minor}.{v.micro}" in path.name
    assert f"bm25s{peer('bm25s').__version__}" in path.name
    monkeypatch.setattr(docs_search, "stdlib_documents", lambda: DOCS)  # a small stand-in, built fast
    built = stdlib_docs_index()
    assert (path / "manifest.json").exists() and len(built) == 5
    assert stdlib_docs_index() is built  # kept in memory

    def no_build():
        raise AssertionError("the cached index should have been loaded")

    monkeypatch.setattr(docs_search, "stdlib_documents", no_build)
    monkeypatch.setattr(docs_search, "_LOADED", {})
    loaded = stdlib_docs_index()
    assert loaded is not built and loaded.search("days between dates") == built.search("days between dates")
    (path / "manifest.json").write_text("{not json")  # a damaged cache is built again
    monkeypatch.setattr(docs_search, "_LOADED", {})
    monkeypatch.setattr(docs_search, "stdlib_documents", lambda: DOCS[:3])
    assert len(stdlib_docs_index()) == 3
    monkeypatch.setattr(docs_search, "stdlib_documents", lambda: DOCS[:4])
    assert len(stdlib_docs_index()) == 3 and len(stdlib_docs_index(rebuild=True)) == 4
