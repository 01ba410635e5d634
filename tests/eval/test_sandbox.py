"""The code sandbox stops what must be stopped and hides what must be hidden."""

from __future__ import annotations

import time

from llmkit.eval.sandbox import network_isolation, run_code
from tests.peers import missing


def test_passing_and_failing_programs():
    ok = run_code("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('fine')\n")
    assert ok.passed and ok.stdout.strip() == "fine"
    bad = run_code("assert 1 + 1 == 3, 'wrong'\n")
    assert bad.status == "failed" and "wrong" in bad.stderr
    broken = run_code("def f(:\n")
    assert broken.status == "error" and "SyntaxError" in broken.stderr


def test_infinite_loop_is_stopped():
    t = time.perf_counter()
    r = run_code("while True:\n    pass\n", timeout=2)
    assert r.status == "timeout" and time.perf_counter() - t < 10


def test_sleeping_forever_is_stopped_by_the_wall_clock():
    r = run_code("import time\ntime.sleep(60)\n", timeout=1.5)
    assert r.status == "timeout" and r.seconds < 10


def test_memory_bomb_is_stopped():
    r = run_code("x = []\nwhile True:\n    x.append(bytearray(50 * 2**20))\n", memory_mb=256, timeout=20)
    assert r.status == "memory"


def test_environment_is_scrubbed_and_directory_empty(monkeypatch):
    monkeypatch.setenv("LLMKIT_SECRET_TOKEN", "hunter2")
    r = run_code("import os\nprint(sorted(os.environ))\nprint(os.listdir('.'))\n")
    assert r.passed
    assert "LLMKIT_SECRET_TOKEN" not in r.stdout and "hunter2" not in r.stdout
    assert r.stdout.strip().splitlines()[1] == "['main.py']"


def test_no_network_where_the_machine_allows_it():
    if not network_isolation():
        missing("this machine does not allow a private network namespace (unshare --net)")
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        assert run_code(code, timeout=10).status == "error"
        assert run_code(code, timeout=10, network=True).passed  # the same program reaches it with network on
    finally:
        server.close()
