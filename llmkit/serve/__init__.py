"""Serving room: the OpenAI-compatible HTTP API over the continuous-batching engine.

    llmkit serve --model runs/quickstart --port 8000

    from llmkit.serve import ServedModel, create_app, serve
    serve([ServedModel("quickstart", llmkit.load("runs/quickstart"))], port=8000)
"""

from __future__ import annotations

from .app import create_app
from .errors import APIError
from .server import ServedModel, Server, with_adapters


def serve(models, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **app_options) -> None:
    """Serve `models` (a `ServedModel` or a list of them) until interrupted."""
    import uvicorn

    app = create_app(models, **app_options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


__all__ = ["APIError", "ServedModel", "Server", "create_app", "serve", "with_adapters"]
