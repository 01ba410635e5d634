"""lm-eval's own `local-completions` model scores multiple choice through `llmkit serve` (token-id
prompts, echo, logprobs) with the same per-choice log-likelihoods and accuracy as lm-eval's `hf`
backend on the same weights."""

from __future__ import annotations


import pytest

from tests.peers import peer

peer("lm_eval")
peer("tenacity")  # lm-eval[api], which local-completions needs

from tests.eval.test_lm_eval_parity import write_tasks  # noqa: E402


def _mc(lm, tasks):
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["par_mc"], task_manager=manager, log_samples=True,
                                  verbosity="ERROR")
    samples = sorted(out["samples"]["par_mc"], key=lambda s: s["doc_id"])
    return out["results"]["par_mc"], samples


def test_local_completions_matches_the_hf_backend(server, tiny_dirs, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks = write_tasks(tmp_path)
    path = str(tiny_dirs["tiny-llama"])
    hf_results, hf = _mc(HFLM(pretrained=path, device="cpu", dtype="float32", batch_size=4), tasks)
    remote = LocalCompletionsAPI(base_url=server.url + "/v1/completions", model="tiny", tokenizer_backend="huggingface",
                                 tokenizer=path, num_concurrent=1, max_retries=1, batch_size=4)
    our_results, ours = _mc(remote, tasks)
    assert len(ours) == len(hf) == 8
    for a, b in zip(hf, ours):
        assert [r[0] for r in b["filtered_resps"]] == pytest.approx([r[0] for r in a["filtered_resps"]], abs=1e-3)
        assert [r[1] for r in b["filtered_resps"]] == [r[1] for r in a["filtered_resps"]]  # is-greedy flags
    for metric in ("acc,none", "acc_norm,none"):
        assert our_results[metric] == hf_results[metric]
