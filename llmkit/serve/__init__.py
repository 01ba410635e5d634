"""Serving room: the OpenAI-compatible HTTP API over the continuous-batching engine.

    llmkit serve --model runs/quickstart --port 8000

    from llmkit.serve import ServerSettings, build_server
    build_server(llmkit.load("runs/quickstart"), ServerSettings(port=8000)).run()

    from llmkit.serve import ServedModel, serve
    serve([ServedModel("quickstart", llmkit.load("runs/quickstart"))], port=8000)
"""

from __future__ import annotations

from .app import create_app
from .errors import APIError
from .launch import BuiltServer, ServerSettings, build_server, serve
from .server import ServedModel, Server, with_adapters

__all__ = ["APIError", "BuiltServer", "ServedModel", "Server", "ServerSettings", "build_server", "create_app", "serve",
           "with_adapters"]
