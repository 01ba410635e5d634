"""tests/processes.py: code that can take the interpreter down (llama.cpp's native crashes) runs
in a child process, and its crash fails the one test that ran it, with the signal and stderr."""

from __future__ import annotations

import sys

import pytest

from tests.processes import run_or_fail


def test_a_crash_in_the_child_fails_the_test_and_names_the_signal():
    crash = "import ctypes, sys; print('reading address 0', file=sys.stderr, flush=True); ctypes.string_at(0)"
    with pytest.raises(pytest.fail.Exception, match=r"killed by SIGSEGV(.|\n)*reading address 0"):
        run_or_fail([sys.executable, "-c", crash])
    with pytest.raises(pytest.fail.Exception, match=r"exited with code 3(.|\n)*bad input"):
        run_or_fail([sys.executable, "-c", "import sys; print('bad input', file=sys.stderr); sys.exit(3)"])
    with pytest.raises(pytest.fail.Exception, match="ran past 0.5 s"):
        run_or_fail([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert run_or_fail([sys.executable, "-c", "print(input()[::-1])"], input="abc\n") == "cba\n"
