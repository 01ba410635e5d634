"""`Embedding`: what every local model does with whole texts — one vector per text (`embed`),
pooled from the last hidden states as the model's sentence-transformers files say (else their
mean) — and, for a classification model, a label per text (`classify`). `LocalLLM` mixes it in."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ..models.sentence import EmbeddingSpec, check_texts, default_spec, embed_token_ids
from ..models.texts import fit_texts
from ..models.transformer import ContextLengthError
from ..utils import fast_bf16

if TYPE_CHECKING:
    from ..models.classifier import Classifier

log = logging.getLogger(__name__)

EMBED_PRECISIONS = ("auto", "fp32", "bf16")


class Embedding:
    """Needs `model`, `config`, `tokenizer`, `name`, `context_window`, `tokenize`, `_pad_id`,
    `embedding` (an `EmbeddingSpec` or None) and `classifier` (a `Classifier` or None)."""

    embedding: EmbeddingSpec | None = None
    classifier: Classifier | None = None

    @property
    def embedding_spec(self) -> EmbeddingSpec:
        """How `embed` pools: the model directory's sentence-transformers spec, else the mean."""
        return self.embedding or default_spec()

    @property
    def embedding_dim(self) -> int:
        """The length of `embed`'s vectors."""
        return self.config.dim * len(self.embedding_spec.pooling)

    @property
    def max_embed_tokens(self) -> int:
        """Tokens `embed` reads per text, special tokens included: the spec's max_seq_length (what
        the model was trained to embed), never more than the context window."""
        limit = self.embedding_spec.max_seq_length
        return min(limit, self.context_window) if limit else self.context_window

    def embed(self, texts: Sequence[str], batch_size: int = 32, truncate: bool = True,
              progress: Callable[[int], None] | None = None, precision: str = "auto") -> np.ndarray:
        """float32 vectors, shape (len(texts), `embedding_dim`), in input order: each text
        tokenized with special tokens, cut at `max_embed_tokens` (one warning says how many were
        cut; with ``truncate=False`` a `ContextLengthError` instead), and pooled from the model's
        last hidden states as `embedding_spec` says. `progress(n)` is called after each batch.
        `precision` (`embed_autocast`): "auto" computes in bf16 where that is fast (CUDA, CPUs with
        AMX or AVX512-BF16; cosine to fp32's vectors ~0.99997), "fp32" or "bf16" as named."""
        return self.embed_tokens(self.embedding_inputs(texts, truncate), batch_size, progress, precision)

    def embed_autocast(self, precision: str = "auto") -> torch.dtype | None:
        """The autocast dtype `embed` runs under for `precision` (None: the weights' own dtype)."""
        if precision not in EMBED_PRECISIONS:
            raise ValueError(f"precision={precision!r} is not supported: use one of {', '.join(EMBED_PRECISIONS)}")
        if precision == "fp32" or (precision == "auto" and (self.model.dtype != torch.float32
                                                              or not fast_bf16(self.model.device))):
            return None
        return torch.bfloat16

    def embedding_inputs(self, texts: Sequence[str], truncate: bool = True) -> list[list[int]]:
        """The token ids `embed` runs for `texts` (see `embed`)."""
        texts = check_texts(texts)
        if self.embedding_spec.lowercase:
            texts = [t.lower() for t in texts]
        return fit_texts(self.tokenizer, texts, self.max_embed_tokens, truncate, self.name or "the model", "embeds")

    def embed_tokens(self, inputs: Sequence[Sequence[int]], batch_size: int = 32,
                     progress: Callable[[int], None] | None = None, precision: str = "auto") -> np.ndarray:
        """`embed` for token-id lists (special tokens already in place), none longer than
        `max_embed_tokens` (`ContextLengthError`) or empty."""
        inputs = [list(ids) for ids in inputs]
        limit = self.max_embed_tokens
        for i, ids in enumerate(inputs):
            if not ids:
                raise ValueError(f"input {i} has no tokens to embed: give it some text")
            if len(ids) > limit:
                raise ContextLengthError(f"input {i} has {len(ids)} tokens; {self.name or 'the model'} embeds at most "
                                         f"{limit}: shorten it")
        return embed_token_ids(self.model, inputs, self.embedding_spec, self._pad_id(), batch_size, progress,
                               self.embed_autocast(precision))

    # ---------------------------------------------------------- classification
    def classify(self, texts: Sequence[str], batch_size: int = 32, truncate: bool = True) -> list[str]:
        """The most likely label of each text (a classification model: `llmkit.load` of an HF
        ``*ForSequenceClassification`` directory). Texts longer than the context window are cut as
        `embed` cuts them (one warning), or refused with ``truncate=False``."""
        probs = self.classify_probs(texts, batch_size, truncate)
        return [self.classifier.labels[i] for i in probs.argmax(-1).tolist()]

    def classify_probs(self, texts: Sequence[str], batch_size: int = 32, truncate: bool = True) -> torch.Tensor:
        """(len(texts), labels) probabilities, columns in the order of `classifier.labels`."""
        if self.classifier is None or self.classifier.per_token:
            kind = "a token classifier" if self.classifier is not None else "not a sequence classifier"
            raise ValueError(f"{self.name or 'this model'} is {kind}: classify needs a model trained with "
                             "`llmkit finetune ... objective=classify` (an HF *ForSequenceClassification directory)")
        rows = fit_texts(self.tokenizer, check_texts(texts), self.context_window, truncate,
                         self.name or "the model", "classifies")
        return self.classifier.classify_ids(rows, self._pad_id(), batch_size)
