"""``POST /v1/embeddings``: one vector per input, computed by `LocalLLM.embed` (pooled as the
model's sentence-transformers files say, else the mean of its last hidden states), as floats or
base64 (little-endian float32, as OpenAI sends them).

Which model embeds: the `model` field picks among the served models, except that a server started
with an embedder (``llmkit serve --embedder NAME``) embeds every request with it, also one that
names the chat model; the response's `model` field names the model that embedded. Inputs longer
than the model embeds are refused (400, ``context_length_exceeded``), as OpenAI does, rather than
silently cut, unless the request sends ``"truncate": true`` (llmkit's field, for text inputs: each is
cut as `embed` cuts it, special tokens kept).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import APIRouter, Request

from ..models.transformer import ContextLengthError
from .errors import APIError
from .inputs import parse_body, token_inputs
from .schemas import EmbeddingRequest
from .server import Server

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(request: Request):
    server: Server = request.app.state.server
    req: EmbeddingRequest = await parse_body(request, EmbeddingRequest, server.max_body_bytes)
    served = server.embedding_model(req.model)
    llm = served.llm
    if req.dimensions is not None and req.dimensions != llm.embedding_dim:
        raise APIError(400, f"dimensions={req.dimensions}: {served.name}'s embeddings have {llm.embedding_dim}",
                       param="dimensions")
    texts = [req.input] if isinstance(req.input, str) else req.input
    try:
        if texts and all(isinstance(t, str) for t in texts):
            inputs = llm.embedding_inputs(texts, truncate=req.truncate)  # tokenized as `embed` does
        else:
            inputs = token_inputs(llm, req.input, "input")  # token ids, checked against the vocabulary
        # `embed`'s own path from the token ids on, between two steps of the engine
        vectors = await asyncio.wrap_future(served.engine.run_exclusive(
            lambda: llm.embed_tokens(inputs, precision=server.embed_precision)))
    except ContextLengthError as e:
        hint = ' (send "truncate": true for that)' if texts and isinstance(texts[0], str) else ""
        raise APIError(400, f"{e}{hint}", param="input", code="context_length_exceeded") from None
    except ValueError as e:  # an input with no tokens
        raise APIError(400, str(e), param="input") from None
    data = []
    for i, v in enumerate(vectors):
        emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" \
            else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = sum(len(x) for x in inputs)
    server.account(request, served.name, n)
    return {"object": "list", "data": data, "model": served.name, "usage": {"prompt_tokens": n, "total_tokens": n}}
