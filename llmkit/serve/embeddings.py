"""``POST /v1/embeddings``: the mean-pooled last hidden state of each input, as floats or base64."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

from fastapi import APIRouter, Request

from ..infer.engine import mean_pooled
from .errors import APIError
from .inputs import parse_body, token_inputs
from .schemas import EmbeddingRequest
from .server import Server

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(request: Request):
    server: Server = request.app.state.server
    req: EmbeddingRequest = await parse_body(request, EmbeddingRequest, server.max_body_bytes)
    served = server.model(req.model)
    llm = served.llm
    inputs = token_inputs(llm, req.input, "input")
    ctx = llm.config.context_window
    for x in inputs:
        if len(x) > ctx:
            raise APIError(400, f"an input has {len(x)} tokens; the model reads at most {ctx}", param="input",
                           code="context_length_exceeded")
    if req.dimensions is not None and req.dimensions != llm.config.dim:
        raise APIError(400, f"dimensions={req.dimensions}: this model's embeddings have {llm.config.dim}",
                       param="dimensions")
    vectors = await asyncio.wrap_future(served.engine.run_exclusive(lambda: mean_pooled(llm.model, inputs)))
    data = []
    for i, v in enumerate(vectors):
        emb: Any = v
        if req.encoding_format == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = sum(len(x) for x in inputs)
    server.account(request, served.name, n)
    return {"object": "list", "data": data, "model": served.name, "usage": {"prompt_tokens": n, "total_tokens": n}}
