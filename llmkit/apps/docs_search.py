"""Keyword search: a BM25 index (by `bm25s`) over (id, text, metadata) documents — the project's one
keyword retriever, for hybrid retrieval to build on — and the index of the standard library's
documentation that the `stdlib-docs` tool searches.

    index = KeywordIndex.build([("a", "Read and write CSV files.", {"title": "csv"}), ...])
    index.search("read a csv file", k=5)   # [Hit(doc_id="a", score=..., title="csv", text=..., metadata=...)]
    index.save("idx/"); KeywordIndex.load("idx/")
    stdlib_docs_index().search("days between two dates")   # datetime.timedelta, ...

The standard-library documents are the `pydoc` topics (``with``, ``typesseq-mutable``, ...) and the
docstrings of the modules of `sys.stdlib_module_names`, their public submodules, functions, classes
(by their signature where they have no docstring) and methods. Sources are found with `importlib.util.find_spec` / `pkgutil` and read with `ast`, never
imported (importing `antigravity` opens a browser, `this` prints). Only C modules, which have no
source, are imported, and only those of two allowlists of modules whose import runs no Python code
and touches nothing outside the process: `_C_MODULES`, documented under their own names, and
`_C_REEXPORTS`, for the names Python modules re-export (``csv.reader`` from ``_csv``, ``os.listdir``
from ``posix``). Modules removed by Python 3.13 are left out, so that a model is not sent to them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import logging
import os
import pkgutil
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of a saved index: manifest.json + documents.json + bm25s's own files
CORPUS_VERSION = 2  # of `stdlib_documents`: a cached index of an older corpus is not reused
Document = tuple[str, str, dict[str, Any]]  # (id, text, metadata); metadata["title"] is indexed too
Entry = tuple[str, str, str]  # (title, kind, text) of one standard-library document
# Words that ask rather than name a topic: a small corpus may lack them, which says nothing about it
QUESTION_WORDS = frozenset("how what which who whom whose why when where do does did can could should would "
                           "may might must i me my we our you your many much".split())

# Removed in 3.12 (PEP 632: distutils; asynchat, asyncore, smtpd, imp) or 3.13 (PEP 594's dead
# batteries, lib2to3); tests, demos and IDLE, whose docs answer no user's question
_SKIP = {"test", "tests", "idle_test", "idlelib", "turtledemo", "pydoc_data", "this", "antigravity",
         "distutils", "lib2to3", "asynchat", "asyncore", "smtpd", "imp", "aifc", "audioop", "cgi", "cgitb",
         "chunk", "crypt", "imghdr", "mailcap", "msilib", "nis", "nntplib", "ossaudiodev", "pipes", "sndhdr",
         "spwd", "sunau", "telnetlib", "uu", "xdrlib"}
# Public C modules, imported to read their docstrings (not `readline`: its import may write terminal
# control codes; not `_tkinter`, which loads Tk)
_C_MODULES = {"array", "atexit", "binascii", "builtins", "cmath", "errno", "faulthandler", "fcntl", "gc", "grp",
              "itertools", "marshal", "math", "mmap", "pwd", "resource", "select", "sys", "syslog", "termios",
              "time", "unicodedata", "zlib"}
# Private C modules whose names Python modules re-export (a module's `from math import sqrt` is a
# use of math, not a re-export, so public C modules are not followed)
_C_REEXPORTS = {"posix", "_bisect", "_bz2", "_collections", "_contextvars", "_csv", "_datetime", "_decimal",
                "_functools", "_heapq", "_io", "_locale", "_lzma", "_operator", "_pickle", "_queue", "_random",
                "_signal", "_socket", "_stat", "_statistics", "_string", "_struct", "_thread", "_weakref", "_zoneinfo"}
_ALIASES = {"posixpath" if os.name == "posix" else "ntpath": "os.path"}  # the name users know
MAX_SIGNATURE = 160


class DocsSearchError(ValueError):
    """A query, a document set or a saved index that the keyword index cannot take."""


@dataclass(frozen=True)
class Hit:
    """One search result: the document's id, its BM25 score, title, text and metadata."""

    doc_id: str
    score: float
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def default_stemmer() -> str | None:
    """"english" (Snowball, by PyStemmer) where PyStemmer is installed, else None: no stemming."""
    return "english" if importlib.util.find_spec("Stemmer") is not None else None


class KeywordIndex:
    """BM25 over documents given as (id, text, metadata), by bm25s: words are lowercased, stopwords
    dropped and, with a stemmer, reduced to their stems. A document's ``metadata["title"]`` is
    indexed with its text. Make one with `build`, or `load` one that `save` wrote."""

    def __init__(self, retriever: Any, documents: list[Document], stemmer: str | None = None,
                 stopwords: str | list[str] | None = "en") -> None:
        self._retriever, self.documents, self.stemmer, self.stopwords = retriever, documents, stemmer, stopwords
        self._stem = None
        if stemmer is not None:
            try:
                import Stemmer  # PyStemmer, optional
            except ImportError:
                raise DocsSearchError(f"stemmer {stemmer!r} needs PyStemmer: pip install PyStemmer "
                                      "(or stemmer=None)") from None
            self._stem = Stemmer.Stemmer(stemmer)

    @classmethod
    def build(cls, documents: Iterable[Document], stemmer: str | None = "auto",
              stopwords: str | list[str] | None = "en", k1: float = 1.5, b: float = 0.75) -> KeywordIndex:
        """Index `documents`. `stemmer`: "auto" is `default_stemmer()`, else a Snowball language
        ("english") or None; `stopwords`: a bm25s language ("en"), a list of words, or None."""
        import bm25s

        docs = [(str(i), str(t), dict(m or {})) for i, t, m in documents]
        if not docs:
            raise DocsSearchError("no documents to index")
        repeated = next((i for i, n in Counter(d[0] for d in docs).items() if n > 1), None)
        if repeated is not None:
            raise DocsSearchError(f"document id {repeated!r} appears more than once; ids must be unique")
        index = cls(None, docs, default_stemmer() if stemmer == "auto" else stemmer, stopwords)
        index._retriever = bm25s.BM25(k1=k1, b=b)
        titled = [f"{m['title']}\n{t}" if m.get("title") else t for _, t, m in docs]
        index._retriever.index(index._tokenize(titled), show_progress=False)
        return index

    def __len__(self) -> int:
        return len(self.documents)

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self._stem, return_ids=False,
                              show_progress=False)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The `k` documents that score highest for `query`, best first (ties: the earlier document);
        documents that share no word with it are left out, so a query of unknown words gives []."""
        if not isinstance(query, str) or not query.strip():
            raise DocsSearchError("the query is empty: give some words to search for")
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise DocsSearchError(f"k={k!r} must be a positive integer (how many results)")
        import numpy as np

        tokens = [t for t in self._tokenize([query])[0] if t and t in self._retriever.vocab_dict]
        if not tokens:
            return []
        scores = self._retriever.get_scores(tokens)
        k = min(k, len(scores))
        top = sorted(np.argpartition(-scores, k - 1)[:k].tolist(), key=lambda i: (-float(scores[i]), i))
        hits = []
        for i in (i for i in top if scores[i] > 0):
            doc_id, text, metadata = self.documents[i]
            hits.append(Hit(doc_id, float(scores[i]), str(metadata.get("title", doc_id)), text, dict(metadata)))
        return hits

    def unknown_terms(self, query: str) -> tuple[list[str], int]:
        """The distinct words of `query` (as the index reads them: lowercased, stopwords out, stemmed;
        question words such as "how" or "many" left out too) that no document contains, and how many
        distinct words it has: a question about something the documents never name ("pandas", "Django") is likely not
        answered by them."""
        words = " ".join(w for w in re.findall(r"\w+", query) if w.lower() not in QUESTION_WORDS)
        tokens = list(dict.fromkeys(t for t in self._tokenize([words])[0] if t)) if words.strip() else []
        return [t for t in tokens if t not in self._retriever.vocab_dict], len(tokens)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index to `directory`, replacing it whole: it is written beside it, then renamed."""
        import bm25s

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
        old = directory.parent / f".{directory.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        try:
            self._retriever.save(tmp, show_progress=False)
            (tmp / "documents.json").write_text(json.dumps([list(d) for d in self.documents], ensure_ascii=False),
                                                encoding="utf-8")
            manifest = {"format": FORMAT_VERSION, "kind": "llmkit.KeywordIndex", "bm25s": bm25s.__version__,
                        "stemmer": self.stemmer, "stopwords": self.stopwords, "documents": len(self.documents)}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            if directory.exists():
                os.rename(directory, old)  # POSIX cannot swap two directories in one rename
            os.rename(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not directory.exists():
                os.rename(old, directory)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> KeywordIndex:
        """An index written by `save`."""
        import bm25s

        directory = Path(directory)
        try:
            manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DocsSearchError(f"{directory} is not a saved keyword index: cannot read manifest.json ({e})") \
                from None
        if manifest.get("format") != FORMAT_VERSION:
            raise DocsSearchError(f"{directory}: index format {manifest.get('format')!r}, this llmkit reads "
                                  f"{FORMAT_VERSION}; build the index again")
        retriever = bm25s.BM25.load(str(directory), load_corpus=False, show_progress=False)
        documents = [tuple(d) for d in json.loads((directory / "documents.json").read_text(encoding="utf-8"))]
        if len(documents) != retriever.scores["num_docs"]:
            raise DocsSearchError(f"{directory}: documents.json has {len(documents)} documents, the BM25 index "
                                  f"{retriever.scores['num_docs']}; build the index again")
        return cls(retriever, documents, manifest.get("stemmer"), manifest.get("stopwords"))


# ----------------------------------------------------------------------------- the standard library
def stdlib_documents() -> list[Document]:
    """The documents of `stdlib_docs_index`: pydoc topics, then modules, functions, classes, methods
    and properties (metadata kind "topic", "module", "function", "class", "method" or "property")."""
    from pydoc_data.topics import topics

    docs: list[Document] = [(f"topic:{key}", text.strip(), {"title": key, "kind": "topic"})
                            for key, text in sorted(topics.items())]
    seen: set[str] = set()
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in _SKIP:
            continue
        try:
            spec = importlib.util.find_spec(name)  # of a top-level name: imports nothing
        except (ImportError, ValueError):
            continue
        for module, path in _modules(name, spec):
            for title, kind, text in _module_documents(module, path):
                if title not in seen:  # the first of a name: the module's own, before a re-export
                    seen.add(title)
                    docs.append((f"{kind}:{title}", text, {"title": title, "kind": kind,
                                                           "module": _ALIASES.get(module, module)}))
    return docs


def _modules(name: str, spec: Any) -> Iterator[tuple[str, Path | None]]:
    """(dotted name, source file, or None for an allowed C module) of a module and of its public
    submodules, found by file lookups (`pkgutil`), never by importing a package."""
    path = _source_of(spec) if spec is not None else None
    if path is None:
        if name in _C_MODULES and spec is not None:
            yield name, None
        return
    yield name, path
    for info in sorted(pkgutil.iter_modules(spec.submodule_search_locations or []), key=lambda i: i.name):
        if not info.name.startswith("_") and info.name not in _SKIP:
            fullname = f"{name}.{info.name}"
            yield from (m for m in _modules(fullname, info.module_finder.find_spec(fullname))  # type: ignore
                        if m[1] is not None)


def _source_of(spec: Any) -> Path | None:
    origin = spec.origin
    if origin == "frozen":  # os, io, codecs, ... are frozen into the interpreter; their source is kept
        origin = getattr(spec.loader_state, "filename", None)
    return Path(origin) if origin and origin.endswith(".py") and os.path.exists(origin) else None


def _module_documents(module: str, path: Path | None) -> Iterator[Entry]:
    """The documents of a module and of its public functions, classes and their methods."""
    shown = _ALIASES.get(module, module)
    if path is None:
        yield from _c_module_documents(module, shown)
        return
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError) as e:
        log.debug("skipping %s: %s", path, e)
        return
    doc = ast.get_docstring(tree) or next(  # or hashlib's __doc__ = "..."
        (inspect.cleandoc(n.value.value) for n in tree.body if isinstance(n, ast.Assign)
         and [getattr(t, "id", None) for t in n.targets] == ["__doc__"] and isinstance(n.value, ast.Constant)
         and isinstance(n.value.value, str)), None)
    if doc:
        yield shown, "module", doc
    reexported: list[tuple[str, str, str]] = []  # (public name, C module, its name there)
    for node in _top_level(tree.body):
        if isinstance(node, _DEFINITIONS) and not node.name.startswith("_"):
            yield from _ast_documents(shown, node)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module in _C_REEXPORTS:
            c_module = _import_c(node.module)
            for alias in node.names if c_module is not None else []:
                names = (getattr(c_module, "__all__", None) or dir(c_module)) if alias.name == "*" else [alias.name]
                reexported += [(alias.asname or n, node.module, n) for n in names]
    for public, c_name, attr in reexported:
        if not public.startswith("_"):
            yield from _c_documents(shown, public, getattr(_import_c(c_name), attr, None))


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """A module's statements, those inside top-level ``if``/``try``/``with`` blocks included."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            yield from _top_level(node.body + getattr(node, "orelse", []))
            for handler in getattr(node, "handlers", []):
                yield from _top_level(handler.body)


def _ast_documents(prefix: str, node: Any, kind: str = "function") -> Iterator[Entry]:
    title, doc = f"{prefix}.{node.name}", ast.get_docstring(node)
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        # a class without a docstring (csv.DictReader in 3.11) is still found by its name and signature
        signature = _signature(title, f"({ast.unparse(init.args)})" if init else "", method=True)
        yield title, "class", f"class {signature}" + (f"\n\n{doc}" if doc else "")
        for child in node.body:
            if isinstance(child, _DEFINITIONS[:2]) and not child.name.startswith("_"):
                yield from _ast_documents(title, child, "method")
    elif doc and doc.strip(" .").lower() != node.name.lower():  # not timedelta.days's "days"
        if kind == "method" and any(getattr(d, "id", getattr(d, "attr", "")) in _PROPERTY for d in node.decorator_list):
            yield title, "property", f"{title}\n\n{doc}"
        else:
            yield title, kind, f"{_signature(title, f'({ast.unparse(node.args)})', kind == 'method')}\n\n{doc}"


_PROPERTY = {"property", "cached_property", "setter", "getter", "deleter"}


def _signature(title: str, parameters: str, method: bool) -> str:
    """``title(parameters)`` without a method's self or cls, cut to MAX_SIGNATURE characters."""
    if method:
        parameters = re.sub(r"^\((self|cls)(, /)?(, |(?=\)))", "(", parameters)
    text = title + parameters
    return text if len(text) <= MAX_SIGNATURE else text[:MAX_SIGNATURE - 4] + " ...)"


@cache
def _import_c(name: str) -> Any:
    """A C module of the allowlists, or None where it is not built here. Never anything else."""
    if name not in _C_MODULES and name not in _C_REEXPORTS:
        raise DocsSearchError(f"{name} is not in the allowlists of C modules safe to import")
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _c_module_documents(module: str, shown: str) -> Iterator[Entry]:
    c_module = _import_c(module)
    if c_module is None:
        return
    if isinstance(c_module.__doc__, str) and c_module.__doc__.strip():
        yield shown, "module", inspect.cleandoc(c_module.__doc__)
    for name in sorted(getattr(c_module, "__all__", None) or dir(c_module)):
        if not name.startswith("_"):
            yield from _c_documents(shown, name, getattr(c_module, name, None))


def _c_documents(prefix: str, name: str, obj: Any, kind: str = "function") -> Iterator[Entry]:
    """The documents of a function or class of a C module, and of the class's methods."""
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return
    title = name if prefix == "builtins" else f"{prefix}.{name}"  # `sorted`, not `builtins.sorted`
    kind = "class" if inspect.isclass(obj) else kind
    doc = obj.__dict__.get("__doc__") if kind == "class" else obj.__doc__  # a class's own, not one inherited
    if isinstance(doc, str) and doc.strip():
        try:
            signature = _signature(title, str(inspect.signature(obj)), kind == "method")
        except (TypeError, ValueError):
            signature = title
        yield title, kind, f"{'class ' if kind == 'class' else ''}{signature}\n\n{inspect.cleandoc(doc)}"
    if kind == "class":
        for method, member in sorted(vars(obj).items()):
            if not method.startswith("_") and inspect.isroutine(member):
                # through getattr: a staticmethod wrapper's own __doc__ is staticmethod's (str.maketrans)
                yield from _c_documents(title, method, getattr(obj, method, member), "method")


def python_stopwords() -> list[str]:
    """English stopwords (bm25s's longer list, NLTK's) less the words that name something in Python:
    keywords ("with", "if", "not"), builtins ("all", "any") and modules ("re")."""
    import builtins
    import keyword

    from bm25s.tokenization import STOPWORDS_EN_PLUS

    python = set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) | set(sys.stdlib_module_names)
    return sorted(set(STOPWORDS_EN_PLUS) - python)


def stdlib_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the standard-library index of this Python, bm25s and stemmer is kept: under
    `cache_dir`, by default ``$LLMKIT_HOME/indexes`` (``~/.cache/llmkit/indexes``)."""
    import bm25s

    if cache_dir is None:
        from llmkit.models.resolve import llmkit_home

        cache_dir = llmkit_home() / "indexes"
    v = sys.version_info
    return Path(cache_dir) / (f"stdlib-docs-{sys.implementation.name}{v.major}.{v.minor}.{v.micro}-"
                              f"bm25s{bm25s.__version__}-{default_stemmer() or 'nostem'}-v{FORMAT_VERSION}.{CORPUS_VERSION}")


_LOADED: dict[Path, KeywordIndex] = {}


def stdlib_docs_index(cache_dir: str | os.PathLike | None = None, rebuild: bool = False) -> KeywordIndex:
    """The keyword index of the standard library's documentation (the module docstring says what is
    in it), built once (a few seconds), saved in `stdlib_cache_dir(cache_dir)` and loaded from there
    after; kept in memory once loaded."""
    path = stdlib_cache_dir(cache_dir)
    if not rebuild and path in _LOADED:
        return _LOADED[path]
    index = None
    if not rebuild and (path / "manifest.json").exists():
        try:
            index = KeywordIndex.load(path)
        except Exception as e:  # a damaged cache is built again, not fatal
            log.warning("the cached standard-library index at %s cannot be read (%s); building it again", path, e)
    if index is None:
        start = time.perf_counter()
        index = KeywordIndex.build(stdlib_documents(), stopwords=python_stopwords())
        index.save(path)
        log.info("indexed %d standard-library documents in %.1f s: %s", len(index), time.perf_counter() - start, path)
    _LOADED[path] = index
    return index
