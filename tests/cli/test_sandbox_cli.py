"""`llmkit sandbox check` (the layers table) and `llmkit sandbox run FILE.py` (status, stdout, stderr),
through `llmkit.cli.main.main`."""

from __future__ import annotations

import pytest

from llmkit.cli import main as cli
from llmkit.cli import sandbox_commands
from llmkit.eval.sandbox import sandbox_layers
from tests.peers import missing


@pytest.fixture(autouse=True)
def sandbox_verb(monkeypatch):
    """The verb as main.py's VERBS names it (added here too until it is there)."""
    if "sandbox" not in cli.VERBS:
        monkeypatch.setitem(cli.VERBS, "sandbox", (sandbox_commands.add_sandbox_args, sandbox_commands.run_sandbox,
                                                   "run untrusted Python confined: `llmkit sandbox check|run --help`"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_prints_every_layer_with_its_state(capsys):
    code, out, _ = run(capsys, "sandbox", "check")
    layers = sandbox_layers()
    rows = out.splitlines()
    for layer, row in zip(layers, rows):
        assert row.split("  ")[0].strip() == layer.name
        assert ("active " if layer.active else "MISSING") in row and layer.detail in row
    active = sum(layer.active for layer in layers)
    assert len(layers) == 9 and rows[len(layers)] == ""
    assert rows[len(layers) + 1].startswith(f"{active} of {len(layers)} layers active")
    assert code == (0 if active == len(layers) else 1)
    if active < len(layers):
        missing(f"sandbox layers missing here: {out}")


def test_run_prints_status_stdout_and_stderr(tmp_path, capsys):
    good = tmp_path / "good.py"
    good.write_text(f"import os, sys\nprint('hello from', os.getcwd() != {str(tmp_path)!r})\n"
                    "print('warned', file=sys.stderr)\n")
    code, out, _ = run(capsys, "sandbox", "run", good)
    assert code == 0
    assert out.startswith("status: passed (exit status 0, ")
    assert "--- stdout ---\nhello from True\n--- stderr ---\nwarned\n" in out

    bad = tmp_path / "bad.py"
    bad.write_text("assert 2 + 2 == 5, 'arithmetic'\n")
    code, out, _ = run(capsys, "sandbox", "run", bad)
    assert code == 1 and out.startswith("status: failed (exit status 1, ") and "AssertionError: arithmetic" in out


def test_run_limits_come_from_the_flags(tmp_path, capsys):
    loop = tmp_path / "loop.py"
    loop.write_text("import time\ntime.sleep(30)\n")
    code, out, _ = run(capsys, "sandbox", "run", loop, "--timeout", "0.5")
    assert code == 1 and out.startswith("status: timeout (exit status none, ")
    hog = tmp_path / "hog.py"
    hog.write_text("x = bytearray(300 * 2**20)\n")
    code, out, _ = run(capsys, "sandbox", "run", hog, "--memory-mb", "128")
    assert code == 1 and out.startswith("status: memory") and "MemoryError" in out
    assert run(capsys, "sandbox", "run", hog, "--memory-mb", "1024")[0] == 0
    disk = tmp_path / "disk.py"
    disk.write_text("open('big.bin', 'wb').write(b'x' * (3 * 2**20))\n")
    code, out, _ = run(capsys, "sandbox", "run", disk, "--max-disk-mb", "2")
    assert code == 1 and "No space left on device" in out
    assert run(capsys, "sandbox", "run", disk, "--max-disk-mb", "4")[0] == 0
    loud = tmp_path / "loud.py"
    loud.write_text("print('x' * 100000)\n")
    code, out, _ = run(capsys, "sandbox", "run", loud, "--max-output-bytes", "1000")
    assert code == 0 and ", output cut)" in out.splitlines()[0] and "[llmkit sandbox: stdout was 100,001 bytes" in out


def test_user_errors_are_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "sandbox", "run", tmp_path / "nowhere.py")
    assert code == 2 and err.strip() == f"llmkit sandbox: error: {tmp_path / 'nowhere.py'}: no such file"
    with pytest.raises(SystemExit) as e:
        cli.main(["sandbox", "run", "x.py", "--timeout", "0"])
    assert e.value.code == 2 and "--timeout: 0 must be more than 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["sandbox"])
    assert e.value.code == 2
