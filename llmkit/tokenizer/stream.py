"""Incremental detokenization for streaming generation.

Decoding one token at a time is wrong for two reasons: a token may hold only part of a UTF-8
character (byte-level BPE, SentencePiece byte fallback), and decoders are context-dependent
(SentencePiece strips the space of the first token, WordPiece joins "##" pieces). The standard
fix (as in text-generation-inference and vLLM) decodes a short window twice: the tokens already
shown (`prefix_offset:read_offset`) and the same plus the new ones (`prefix_offset:`); the new
text is the difference. Text is held back while it ends in U+FFFD (an unfinished character).
Each step costs a decode of a few tokens, not of the whole sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

REPLACEMENT_CHAR = "\ufffd"

# transformers' clean_up_tokenization (applied on decode to non-BPE models when the config asks).
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
# Proper prefixes of those patterns: text ending in one may still change when more text arrives.
_CLEANUP_PREFIXES = {a[:k] for a, _ in _CLEANUP for k in range(1, len(a))}


def clean_up_tokenization(text: str) -> str:
    """Remove spaces before punctuation and contractions, as transformers' clean_up_tokenization."""
    for a, b in _CLEANUP:
        text = text.replace(a, b)
    return text


class StreamDecoder:
    """Turns a stream of token ids into text deltas.

    `"".join(push(t) for t in ids) + flush() == decode(ids)` holds, and no delta ends in the middle
    of a character. Create one per generated sequence (see `Tokenizer.stream_decoder`).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], clean_up: bool = False,
                 byte_ids: Collection[int] = (), skipped_ids: Collection[int] = ()) -> None:
        """`decode(ids) -> str` decodes a window of ids; `clean_up` applies transformers'
        clean_up_tokenization to the output, holding back text a later token could still change.

        `byte_ids` are SentencePiece byte-fallback pieces (`<0x41>`): their decoder turns a whole
        run of them into U+FFFDs when the run is not valid UTF-8, so text is held back until a
        non-byte token closes the run. `skipped_ids` decode to nothing (skipped special tokens)
        and so do not close a run.
        """
        self._decode = decode
        self._clean_up = clean_up
        self._byte_ids = frozenset(byte_ids)
        self._skipped_ids = frozenset(skipped_ids)
        self._in_byte_run = False
        self._pending = ""        # raw text held back for clean-up
        self._ids: list[int] = []
        self._prefix_offset = 0   # start of the context window (text already emitted)
        self._read_offset = 0     # end of emitted tokens
        self._prefix_text = ""    # decode(ids[prefix_offset:read_offset])

    @property
    def ids(self) -> list[int]:
        """All token ids pushed so far."""
        return list(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly "")."""
        token_id = int(token_id)
        self._ids.append(token_id)
        if token_id not in self._skipped_ids:
            self._in_byte_run = token_id in self._byte_ids
        if self._in_byte_run:
            return ""
        text = self._decode(self._ids[self._prefix_offset:])
        if len(text) <= len(self._prefix_text) or text.endswith(REPLACEMENT_CHAR):
            return ""  # nothing new yet, or an unfinished multi-byte character at the end
        return self._emit(self._advance(text))

    def flush(self) -> str:
        """Return whatever is still held back (e.g. a truncated character at the very end)."""
        raw = ""
        if self._read_offset < len(self._ids):
            text = self._decode(self._ids[self._prefix_offset:])
            raw = self._advance(text) if len(text) > len(self._prefix_text) else self._skip()
        raw, self._pending = self._pending + raw, ""
        return clean_up_tokenization(raw) if self._clean_up else raw

    def _emit(self, raw: str) -> str:
        if not self._clean_up:
            return raw
        # Clean-up patterns all start with a space; hold back a tail that could begin one.
        text = self._pending + raw
        hold = max((k for k in range(1, 5) if text[-k:] in _CLEANUP_PREFIXES), default=0)
        self._pending = text[len(text) - hold:] if hold else ""
        return clean_up_tokenization(text[:len(text) - hold])

    def _advance(self, text: str) -> str:
        delta = text[len(self._prefix_text):]
        # The next window starts at the tokens of this delta. Decoders that treat a window's first
        # token specially (SentencePiece strips its space) do so in both decodes of a step alike.
        if self._read_offset != self._prefix_offset:
            self._prefix_offset = self._read_offset
            text = self._decode(self._ids[self._prefix_offset:])
        self._prefix_text = text
        self._read_offset = len(self._ids)
        return delta

    def _skip(self) -> str:
        self._read_offset = len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix_offset:])
        return ""
