"""Retrieval-augmented generation: documents to cited answers.

    llmkit rag index --docs docs/ --store runs/idx          # or --store postgresql://user@host/db
    llmkit rag ask --store runs/idx --model M "How do I read a CSV file?"
    llmkit rag eval --store runs/idx --questions qa.jsonl --out runs/rag-eval

load (`loaders`: text, Markdown, HTML without its boilerplate, PDF; source and position kept) → chunk
(`chunking`: recursive by headings, paragraphs and sentences, or token windows, counted by the
embedder's tokenizer) → embed (`embedding`: only through an `embedder=`, an `LLM` with ``embed``,
all-MiniLM-L6-v2 by default, batched and cached by content hash) → store (`stores`: FAISS on disk,
flat or HNSW, or PostgreSQL with pgvector, behind one interface; `indexing` keeps a store current
document by document, so an interrupted run resumes) → retrieve (`retrieval`: dense, BM25 through the
project's one keyword index, hybrid by reciprocal-rank fusion, MMR, metadata filters, an LLM
reranker) → answer (`answer`: passages packed by the one context assembler, numbered citations that
map back to their source; "not in the documents" when the evidence is under a threshold). `evaluate`,
`answer_eval` and `representations` measure it on labelled questions (`llmkit.data.rag_questions`).

Every store's vectors are L2-normalised, so scores are cosine similarities; a store records its
embedder and dimension in a manifest and refuses another.
"""

from .answer import NOT_FOUND, AnswerStream, Citation, RAGAnswer, answer_stream, ask
from .embedding import EmbeddingCache, default_embedder, embed_texts
from .indexing import ChunkSettings, IndexReport, index_documents
from .loaders import LoadError, LoadResult, documents_from_records, load_directory, load_file
from .records import Chunk, Document, ScoredChunk
from .retrieval import Retrieval, Retriever, mmr, rrf
from .stores import StoreError, StoreMismatch, VectorStore, open_store
from .workflow import build_index, evaluate_store, open_retriever

__all__ = ["NOT_FOUND", "AnswerStream", "Chunk", "ChunkSettings", "Citation", "Document", "EmbeddingCache",
           "IndexReport", "LoadError", "LoadResult", "RAGAnswer", "Retrieval", "Retriever", "ScoredChunk",
           "StoreError", "StoreMismatch", "VectorStore", "answer_stream", "ask", "build_index", "default_embedder",
           "documents_from_records", "embed_texts", "evaluate_store", "index_documents", "load_directory",
           "load_file", "mmr", "open_retriever", "open_store", "rrf"]
