"""Registering the `llmkit` backend adds to lm-eval's model registry and never replaces it: in a
fresh interpreter that imports our backend before lm-eval has loaded its own models, `hf` is still
there, and `llmkit lm-eval --model hf` evaluates a tiny local model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.eval.test_lm_eval_parity import write_tasks
from tests.peers import peer

peer("lm_eval")

OFFLINE = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def test_importing_the_backend_first_keeps_lm_evals_own_models():
    code = ("import llmkit.eval.lm_eval_backend as ours\n"
            "from lm_eval.api.registry import get_model\n"
            "print(get_model('hf').__name__, get_model('llmkit') is ours.LLMKitLM)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=OFFLINE)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["HFLM", "True"]


def test_llmkit_lm_eval_runs_lm_evals_hf_model(tiny_dirs, tmp_path):
    (tmp_path / "tasks").mkdir()
    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "llmkit", "lm-eval", "--model", "hf", "--model_args",
                        f"pretrained={tiny_dirs['tiny-gpt2']},dtype=float32", "--device", "cpu", "--tasks", "par_mc",
                        "--include_path", str(tasks), "--limit", "4", "--output_path", str(out)],
                       capture_output=True, text=True, timeout=600, env=OFFLINE)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    written = list(out.rglob("results_*.json"))
    assert len(written) == 1, r.stdout[-2000:]
    results = json.loads(written[0].read_text())
    assert results["config"]["model"] == "hf"
    assert "acc,none" in results["results"]["par_mc"]
    assert results["n-samples"]["par_mc"]["effective"] == 4
