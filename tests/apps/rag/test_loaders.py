"""Loaders: text, Markdown, HTML and PDF files as Documents; a directory with its failures listed;
(id, text, metadata) records."""

from __future__ import annotations

import inspect

import pytest

from llmkit.apps.rag.loaders import (LoadError, LoadResult, documents_from_records, html_to_text, iter_directory,
                                     load_directory, load_file)
from llmkit.apps.rag.records import Document


def tiny_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A valid PDF written by hand (a few hundred bytes): one Helvetica text line per page."""
    def escape(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    n = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {n} >>",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({escape(text)}) Tj ET" if text else ""
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                       f"/Contents {5 + 2 * i} 0 R >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    if title is not None:
        objects.append(f"<< /Title ({escape(title)}) >>")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    info = f" /Info {len(objects)} 0 R" if title is not None else ""
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_text_file_ids_metadata_and_normalised_text(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "notes.txt"
    path.write_bytes("\ufeffFirst line\r\nsecond line\rthird".encode("utf-8"))
    doc = load_file(path, root=tmp_path)
    assert doc == Document("sub/notes.txt", "First line\nsecond line\nthird",
                           {"source": str(path), "format": "text", "title": "notes.txt"})
    assert load_file(path).doc_id == "notes.txt"          # no root: the file name
    assert load_file(str(path), root=str(tmp_path)).metadata["source"] == str(path)
    other = tmp_path / "notes.rst"
    other.write_text("Title\n=====\n\nBody.", encoding="utf-8")
    assert load_file(other).metadata["format"] == "text"
    unknown = tmp_path / "CHANGES"
    unknown.write_text("plain text", encoding="utf-8")
    assert load_file(unknown).metadata["format"] == "text"


def test_markdown_title_is_the_first_h1_outside_code(tmp_path):
    text = "Intro line\n\n```bash\n# not a heading\n```\n\n## Sub first\n\n# Real Title #\n\nBody\n"
    (tmp_path / "a.md").write_text(text, encoding="utf-8")
    doc = load_file(tmp_path / "a.md")
    assert doc.text == text and doc.metadata["format"] == "markdown" and doc.metadata["title"] == "Real Title"
    (tmp_path / "b.markdown").write_text("no heading here", encoding="utf-8")
    assert load_file(tmp_path / "b.markdown").metadata["title"] == "b.markdown"


PAGE = """<!DOCTYPE html><html><head><title>The &amp; Page</title><style>p { color: red }</style>
<script>var hidden = "<p>not text</p>";</script></head>
<body><header><nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav><p>Site banner</p></header>
<div role="banner">Also a banner</div>
<main><article><header><h1>Guide   to &lt;RAG&gt;</h1></header>
<p>Retrieval   <em>augments</em>
   generation.&nbsp;It&#39;s simple.</p>
<h2>Install</h2>
<ul><li>one</li><li><p>two &amp; three</p></li></ul>
<pre>
def f():
    # a comment, not a heading
    return 1
</pre>
<table><tr><th>name</th><th>size</th></tr><tr><td>a</td><td>1</td></tr></table>
<p>line<br>break</p>
<aside>Related posts</aside><form><input name="q"><button>Search</button></form>
<svg><text>chart</text></svg><template><p>later</p></template><noscript>enable js</noscript>
<div role="navigation">Prev | Next</div><p hidden>secret</p>
<section><footer>Section footer kept</footer></section>
</article></main>
<footer>Copyright</footer><div role="contentinfo">Contact</div>
</body></html>"""

PAGE_TEXT = """# Guide to <RAG>

Retrieval augments generation. It's simple.

## Install

- one
- two & three

```
def f():
    # a comment, not a heading
    return 1
```

name | size
a | 1

line
break

Section footer kept"""


def test_html_visible_text_without_boilerplate(tmp_path):
    assert html_to_text(PAGE) == (PAGE_TEXT, "The & Page")
    (tmp_path / "page.htm").write_text(PAGE, encoding="utf-8")
    doc = load_file(tmp_path / "page.htm")
    assert doc.text == PAGE_TEXT and doc.metadata == {"source": str(tmp_path / "page.htm"), "format": "html",
                                                      "title": "The & Page"}
    # no <title>: the first h1; neither: the file name
    assert html_to_text("<h2>Sub</h2><h1>Top <b>one</b></h1><p>x</p>")[1] == "Top one"
    (tmp_path / "bare.html").write_text("<p>just text</p>", encoding="utf-8")
    assert load_file(tmp_path / "bare.html").metadata["title"] == "bare.html"


def test_html_lists_close_and_pre_fences_outlast_backticks():
    text, _ = html_to_text("<ol><li>a<li>b</ol><p>after</p><pre>```x```</pre><p>end</p>")
    assert text == "- a\n- b\n\nafter\n\n````\n```x```\n````\n\nend"


def test_pdf_pages_map_back_and_title(tmp_path):
    path = tmp_path / "paper.pdf"
    path.write_bytes(tiny_pdf(["Page one says hello.", "", "Third page (final)."], title="A Tiny Paper"))
    doc = load_file(path, root=tmp_path)
    assert doc.doc_id == "paper.pdf" and doc.metadata["format"] == "pdf" and doc.metadata["title"] == "A Tiny Paper"
    assert doc.text == "Page one says hello.\n\n\n\nThird page (final)."
    pages = doc.metadata["pages"]
    assert [p for p, _ in pages] == [1, 2, 3]
    assert doc.text[pages[0][1]:].startswith("Page one") and doc.text[pages[2][1]:] == "Third page (final)."
    untitled = tmp_path / "untitled.pdf"
    untitled.write_bytes(tiny_pdf(["Some text."]))
    assert load_file(untitled).metadata["title"] == "untitled.pdf"


def test_bad_files_raise_load_error_naming_the_reason(tmp_path):
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.md").write_text("  \n\n ", encoding="utf-8")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    reasons = {}
    for name in ("broken.pdf", "latin.txt", "empty.md", "blob.txt"):
        with pytest.raises(LoadError) as info:
            load_file(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name))
        reasons[name] = info.value.reason
    assert reasons["broken.pdf"].startswith("not a readable PDF")
    assert reasons["latin.txt"].startswith("not UTF-8 (byte 0xe9 at offset 3)") and "iconv" in reasons["latin.txt"]
    assert reasons["empty.md"] == "no text"
    assert reasons["blob.txt"].startswith("binary data")
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "missing.txt")
    elsewhere = tmp_path / "x" / "y.txt"
    elsewhere.parent.mkdir()
    elsewhere.write_text("y", encoding="utf-8")
    with pytest.raises(ValueError, match="not under root="):
        load_file(elsewhere, root=tmp_path / "other")


def test_load_directory_sorts_skips_hidden_and_lists_failures(tmp_path):
    files = {"b.md": "# B\n\nbee", "a/z.txt": "zed", "a/c.html": "<title>C</title><p>sea</p>", "d.rst": "dee",
             ".hidden.txt": "no", ".git/config.txt": "no", "image.png": "not matched",
             "empty.txt": "", "bad.pdf": "%PDF-1.4 garbage"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "p.pdf").write_bytes(tiny_pdf(["pdf text"]))
    result = load_directory(tmp_path)
    assert isinstance(result, LoadResult)
    assert [d.doc_id for d in result.documents] == ["a/c.html", "a/z.txt", "b.md", "d.rst", "p.pdf"]
    assert [d.metadata["format"] for d in result.documents] == ["html", "text", "markdown", "text", "pdf"]
    assert sorted((p.removeprefix(str(tmp_path) + "/"), r.split(" (")[0]) for p, r in result.failures) == [
        ("bad.pdf", "not a readable PDF"), ("empty.txt", "no text")]
    with_hidden = load_directory(tmp_path, patterns=("**/*.txt",), skip_hidden=False)
    assert [d.doc_id for d in with_hidden.documents] == [".git/config.txt", ".hidden.txt", "a/z.txt"]
    with pytest.raises(TypeError, match="sequence of globs"):
        load_directory(tmp_path, patterns="**/*.txt")
    with pytest.raises(NotADirectoryError, match="root="):
        load_directory(tmp_path / "b.md")


def test_iter_directory_reads_lazily(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text(f"doc {i}", encoding="utf-8")
    failures: list = []
    docs = iter_directory(tmp_path, failures=failures)
    assert inspect.isgenerator(docs)
    assert next(docs).doc_id == "0.txt"
    (tmp_path / "2.txt").write_text("changed before it was read", encoding="utf-8")
    assert [d.text for d in docs] == ["doc 1", "changed before it was read"] and failures == []


def test_documents_from_records():
    docs = documents_from_records([("topic:with", "The with statement.", {"title": "with", "kind": "topic"}),
                                   ("os.path", "Path functions.", {"source": "https://docs.python.org/os.path"}),
                                   ("plain", "No metadata.")])
    assert docs[0] == Document("topic:with", "The with statement.",
                               {"source": "topic:with", "format": "text", "title": "with", "kind": "topic"})
    assert docs[1].metadata["source"] == "https://docs.python.org/os.path" and docs[1].metadata["title"] == "os.path"
    assert docs[2].metadata == {"source": "plain", "format": "text", "title": "plain"}
    with pytest.raises(ValueError, match="'a' appears twice"):
        documents_from_records([("a", "x"), ("a", "y")])
    with pytest.raises(ValueError, match=r"record 0 .*\(id, text\)"):
        documents_from_records(["just a string"])
    with pytest.raises(ValueError, match="id=''"):
        documents_from_records([("", "text")])
