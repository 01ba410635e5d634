"""Loaders: files and records as `Document`s, the first step of retrieval.

    doc = load_file("docs/guide/install.md", root="docs")   # doc_id "guide/install.md"
    result = load_directory("docs")                         # .documents (by doc_id), .failures
    docs = documents_from_records(stdlib_documents())       # (id, text, metadata) tuples

Formats, chosen by the file's extension (anything else is read as UTF-8 text):

- text (.txt, .rst, unknown): the file as it is; title = the file name.
- markdown (.md, .markdown): the file as it is, headings kept (the recursive chunker splits at
  them); title = the first ``# `` heading, else the file name.
- html (.html, .htm): the visible text (`html_to_text`); title = ``<title>``, else the first h1.
- pdf (.pdf, read with `pypdf`): the pages' text joined by a blank line; ``metadata["pages"]`` =
  ``[(page_number, start_char), ...]`` (pages from 1) so that a position maps back to its page;
  title = the PDF's own title, else the file name.

Line ends are made ``\\n`` and a UTF-8 byte-order mark is dropped; positions (chunk offsets) are
into `Document.text`, not into the file's bytes. A file that yields no text is an error
(`LoadError`, reason "no text"); `load_directory` lists such files in ``failures`` and goes on.
"""

from __future__ import annotations

import logging
import os
import re
from html.parser import HTMLParser
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chunking import markdown_headings
from .records import Document

FORMATS = {".txt": "text", ".rst": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
           ".htm": "html", ".pdf": "pdf"}
log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("**/*.txt", "**/*.md", "**/*.markdown", "**/*.html", "**/*.htm", "**/*.pdf", "**/*.rst")


class LoadError(ValueError):
    """A file that cannot be read as a document: `path`, and `reason` (e.g. "no text")."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass
class LoadResult:
    """What `load_directory` read: `documents` sorted by doc_id, and `failures` as (path, reason)
    for each file that could not be read (the run goes on past them)."""

    documents: list[Document] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def load_file(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Document:
    """Read one file as a `Document` (the format follows the extension; see the module docstring).
    doc_id is the path relative to `root` in posix form, or the file name when `root` is None.
    Raises `LoadError` for a file that cannot be decoded or parsed or holds no text, and
    FileNotFoundError for a missing one."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return _load(p, _doc_id(p, root), str(path))


def _load(p: Path, doc_id: str, path: str) -> Document:
    """`load_file` once the id is known; `path` is the path as given (metadata "source", errors)."""
    fmt = FORMATS.get(p.suffix.lower(), "text")
    if fmt == "pdf":
        text, meta = _read_pdf(p, path)
    else:
        text = _normalise(_read_text(p, path))
        meta = {"title": p.name}
        if fmt == "html":
            text, title = html_to_text(text)
            meta["title"] = title or p.name
        elif fmt == "markdown":
            meta["title"] = next((h.title for h in markdown_headings(text) if h.level == 1), p.name)
    if not text.strip():
        raise LoadError(path, "no text")
    return Document(doc_id=doc_id, text=text, metadata={"source": path, "format": fmt, **meta})


def iter_directory(root: str | os.PathLike, patterns: Sequence[str] = DEFAULT_PATTERNS, skip_hidden: bool = True,
                   failures: list[tuple[str, str]] | None = None) -> Iterator[Document]:
    """Documents of the files under `root` that match any of the glob `patterns`, one at a time in
    doc_id order (the file list is gathered first; files are read as they are asked for). Files and
    folders whose name starts with "." are left out when `skip_hidden`. A file that fails is
    appended to `failures` as (path, reason) when a list is given, else skipped with a warning."""
    base = Path(root)
    if not base.is_dir():
        raise NotADirectoryError(f"root={str(root)!r} is not a directory: give the folder that holds the documents")
    if isinstance(patterns, str):
        raise TypeError(f"patterns={patterns!r} must be a sequence of globs, e.g. ({patterns!r},)")
    for rel, path in _matching_files(base, patterns, skip_hidden):
        try:
            yield _load(path, rel, str(path))
        except Exception as e:  # one bad file never stops the run: it is listed with its reason
            reason = (e.reason if isinstance(e, LoadError) else f"cannot be read ({e.strerror or e})"
                      if isinstance(e, OSError) else f"{type(e).__name__}: {e}")
            if failures is None:
                log.warning("skipped %s: %s", path, reason)
            else:
                failures.append((str(path), reason))


def load_directory(root: str | os.PathLike, patterns: Sequence[str] = DEFAULT_PATTERNS,
                   skip_hidden: bool = True) -> LoadResult:
    """Every document under `root` (as `iter_directory`), with the files that failed listed."""
    result = LoadResult()
    result.documents = list(iter_directory(root, patterns, skip_hidden, failures=result.failures))
    return result


def documents_from_records(records: Iterable[Sequence[Any]]) -> list[Document]:
    """(id, text[, metadata]) records, e.g. `llmkit.apps.docs_search.stdlib_documents()`, as
    Documents of format "text" whose source is the id, unless the metadata says otherwise."""
    docs, seen = [], set()
    for i, record in enumerate(records):
        if isinstance(record, (str, bytes)) or len(record) not in (2, 3):
            raise ValueError(f"record {i} is {record!r:.80}: give (id, text) or (id, text, metadata) tuples")
        doc_id, text, meta = record[0], record[1], (record[2] if len(record) == 3 else None) or {}
        if not isinstance(doc_id, str) or not doc_id:
            raise ValueError(f"record {i}: id={doc_id!r} must be a non-empty string")
        if not isinstance(text, str):
            raise ValueError(f"record {doc_id!r}: text must be a string, got {type(text).__name__}")
        if doc_id in seen:
            raise ValueError(f"record {i}: id {doc_id!r} appears twice; ids must be unique (a store keeps one "
                             "document per id)")
        seen.add(doc_id)
        docs.append(Document(doc_id=doc_id, text=text,
                             metadata={"source": doc_id, "format": "text", "title": doc_id, **dict(meta)}))
    return docs


# ---------------------------------------------------------------------------- helpers
def _doc_id(path: Path, root: str | os.PathLike | None) -> str:
    if root is None:
        return path.name
    try:  # absolute and normalised, symbolic links kept as they are named
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not under root={str(root)!r}: give the folder that holds it, or root=None "
                         "(doc_id = the file name)") from None


def _matching_files(base: Path, patterns: Sequence[str], skip_hidden: bool) -> list[tuple[str, Path]]:
    found: dict[str, Path] = {}
    for pattern in patterns:
        for path in base.glob(pattern):
            rel = path.relative_to(base).as_posix()
            if rel in found or not path.is_file():
                continue
            if skip_hidden and any(part.startswith(".") for part in rel.split("/")):
                continue
            found[rel] = path
    return sorted(found.items())


def _read_text(path: Path, shown: str) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise LoadError(shown, "binary data (NUL bytes), not text: give it a known extension or leave it out "
                               "of the patterns")
    try:
        return data.decode("utf-8-sig")  # UTF-8, with or without a byte-order mark
    except UnicodeDecodeError as e:
        raise LoadError(shown, f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}): convert it, e.g. "
                               f"iconv -f latin1 -t utf-8") from None


def _normalise(text: str) -> str:
    """Unix line ends, and no NUL characters (PDF text extraction emits them; PostgreSQL refuses them)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _read_pdf(path: Path, shown: str) -> tuple[str, dict[str, Any]]:
    try:
        from pypdf import PdfReader
    except ImportError as e:  # pragma: no cover - pypdf is in the rag extra
        raise ImportError("reading PDF needs pypdf: pip install 'llmkit[rag]'") from e
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError(shown, "encrypted PDF: decrypt it first (e.g. qpdf --decrypt)")
        texts = [_normalise(page.extract_text() or "").strip() for page in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or ""
    except LoadError:
        raise
    except Exception as e:  # pypdf raises many kinds (PdfReadError, struct errors, ...) on a broken file
        raise LoadError(shown, f"not a readable PDF ({type(e).__name__}: {e})") from None
    pages, start = [], 0
    for number, text in enumerate(texts, start=1):
        pages.append((number, start))
        start += len(text) + 2
    meta = {"title": str(title).strip() or path.name, "pages": pages}
    return "\n\n".join(texts), meta


# ---------------------------------------------------------------------------- HTML
# By hand over the standard library's html.parser, not a new dependency: what retrieval needs is
# the visible text with its block structure, which one small event handler gives.
SKIP_TAGS = frozenset({"script", "style", "noscript", "nav", "header", "footer", "aside", "form", "svg", "template",
                       "button"})
SKIP_ROLES = frozenset({"navigation", "banner", "contentinfo"})
# <header>/<footer> are the page's banner and footer only outside these (ARIA's rule): an article's
# own header, which often holds its h1, is content
SECTIONING = frozenset({"article", "main", "section"})
HEADINGS = {f"h{i}": i for i in range(1, 7)}
LIST_TAGS = frozenset({"ul", "ol", "dl", "table"})
LINE_TAGS = frozenset({"li", "dt", "dd", "tr"})  # one line each, with no blank line between neighbours
BLOCK_TAGS = frozenset({"address", "article", "blockquote", "body", "caption", "details", "dialog", "div",
                        "fieldset", "figcaption", "figure", "hr", "html", "main", "p", "section", "summary", "tbody",
                        "tfoot", "thead"}) | LIST_TAGS | LINE_TAGS
VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                       "wbr"})


def html_to_text(html: str) -> tuple[str, str]:
    """(text, title) of an HTML page: the visible text, boilerplate left out (script, style, nav,
    page header and footer, aside, form, svg, template, elements with role navigation / banner /
    contentinfo or the hidden attribute). Blocks are separated by a blank line, whitespace within
    a paragraph collapsed; headings become Markdown ``#`` lines, list items and table rows lines of
    their own (``- item``, ``cell | cell``), ``<pre>`` keeps its text verbatim inside a ``` fence.
    The title is ``<title>``, else the first h1, else ""."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    parser.flush()
    title = " ".join("".join(parser.title).split()) or parser.first_h1
    text = ""
    for i, (kind, block) in enumerate(parser.blocks):
        if i:
            text += "\n" if kind in ("item", "row") and parser.blocks[i - 1][0] in ("item", "row") else "\n\n"
        text += block
    return text, title


class _HtmlText(HTMLParser):
    """Collects `blocks` [(kind, text)], kind "p", "h", "item", "row" or "pre", and the title."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities decoded in handle_data
        self.blocks: list[tuple[str, str]] = []
        self.lines: list[list[str]] = [[]]  # the open block's text, one list per <br> line
        self.level, self.pre, self.sections = 0, 0, 0  # open heading's level, <pre> and sectioning depths
        self.lists: list[str] = []  # open list containers ("|") and line elements ("item", "row") in them
        self.skip_tag, self.skip_depth = "", 0
        self.in_title, self.title, self.first_h1 = False, [], ""

    def _boilerplate(self, tag: str, attrs: dict[str, str | None]) -> bool:
        if tag in ("header", "footer"):
            return self.sections == 0
        roles = set((attrs.get("role") or "").lower().split())
        return tag in SKIP_TAGS or bool(roles & SKIP_ROLES) or "hidden" in attrs

    def handle_starttag(self, tag: str, attr_list: list[tuple[str, str | None]]) -> None:
        if self.skip_tag:
            self.skip_depth += tag == self.skip_tag
            return
        if tag not in VOID_TAGS and self._boilerplate(tag, dict(attr_list)):
            self.skip_tag, self.skip_depth = tag, 1
            return
        self.in_title = self.in_title or tag == "title"
        self.sections += tag in SECTIONING
        if tag == "br":
            self.lines[-1].append("\n") if self.pre else self.lines.append([])
        elif tag == "pre":
            self.flush()
            self.pre += 1
        elif self.pre:
            return
        elif tag in HEADINGS:
            self.flush()
            self.level = HEADINGS[tag]
        elif tag in BLOCK_TAGS:
            self.flush()
            if tag in LIST_TAGS:
                self.lists.append("|")
            elif tag in LINE_TAGS:
                self.lists.append("row" if tag == "tr" else "item")
        elif tag in ("td", "th") and "".join(self.lines[-1]).strip():
            self.lines[-1].append(" | ")

    def handle_endtag(self, tag: str) -> None:
        if self.skip_tag:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                self.skip_tag = self.skip_tag if self.skip_depth else ""
            return
        self.in_title = self.in_title and tag != "title"
        self.sections = max(0, self.sections - (tag in SECTIONING))
        if tag == "pre" and self.pre:
            self.flush()
            self.pre -= 1
        elif self.pre or not (tag in HEADINGS or tag in BLOCK_TAGS):
            return
        self.flush()
        if tag in HEADINGS:
            self.level = 0
        elif tag in LIST_TAGS and "|" in self.lists:  # closes any line element left open in it
            del self.lists[len(self.lists) - self.lists[::-1].index("|") - 1:]
        elif tag in LINE_TAGS and self.lists and self.lists[-1] != "|":
            self.lists.pop()

    def handle_data(self, data: str) -> None:
        if not self.skip_tag:
            (self.title if self.in_title else self.lines[-1]).append(data)

    def flush(self) -> None:
        """Close the open block: append it to `blocks` if it holds any text."""
        lines, self.lines = self.lines, [[]]
        if self.pre:
            text = "".join("".join(line) for line in lines).removeprefix("\n").rstrip()
            if text.strip():
                ticks = max((len(run) for run in re.findall("`{3,}", text)), default=2)
                fence = "`" * (ticks + 1)  # longer than any run of backticks inside
                self.blocks.append(("pre", f"{fence}\n{text}\n{fence}"))
            return
        text = "\n".join(line for line in (" ".join("".join(parts).split()) for parts in lines) if line)
        if not text:
            return
        if self.level:
            text = " ".join(text.split())
            self.first_h1 = self.first_h1 or (text if self.level == 1 else "")
            self.blocks.append(("h", "#" * self.level + " " + text))
        elif self.lists and self.lists[-1] != "|":
            self.blocks.append((self.lists[-1], ("- " if self.lists[-1] == "item" else "") + text))
        else:
            self.blocks.append(("p", text))
