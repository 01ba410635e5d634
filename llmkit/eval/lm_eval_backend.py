"""An lm-eval model backend named ``llmkit``: lm-eval's tasks, prompts and metrics, llmkit's model.

    llmkit lm-eval --model_args pretrained=runs/quickstart --tasks hellaswag
    lm_eval.simple_evaluate(model=LLMKitLM(pretrained="runs/quickstart"), tasks=[...])

Importing this module registers the backend (lm-eval 0.4.13 has no plugin discovery; later
versions read the ``lm_eval.models`` entry point that pyproject declares). Tokenisation, the
rolling windows of perplexity tasks and the generation stopping rules follow lm-eval's `hf`
backend, so the two give the same numbers on the same weights (tests/eval/test_lm_eval_parity.py).
"""

from __future__ import annotations

import logging
from typing import Any

try:
    # lm-eval fills its model registry lazily, on the first lookup of an empty one: registering into
    # it before its own models are loaded would leave `llmkit` alone there (`--model hf` then fails)
    import lm_eval.models  # noqa: F401
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - exercised only without lm-eval
    raise ImportError("the lm-eval backend needs lm-eval: pip install 'lm-eval>=0.4.8'") from e

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def _flag(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes")


@register_model("llmkit")
class LLMKitLM(TemplateLM):
    """model_args: pretrained (any llmkit model name), batch_size, max_length, max_gen_toks,
    device, dtype, add_bos_token (as in lm-eval's hf backend)."""

    def __init__(self, pretrained: str, batch_size: int | str = 16, max_length: int | None = None,
                 max_gen_toks: int = 256, device: str | None = None, dtype: str | None = None,
                 add_bos_token: bool | str | None = None, **unused: Any):
        super().__init__()
        from ..infer.llm import LocalLLM, load
        from ..utils import default_device

        if unused:
            log.warning("llmkit backend ignores model_args %s", sorted(unused))
        if device and str(device).startswith("cuda"):
            import torch

            if not torch.cuda.is_available():  # lm-eval's CLI asks for cuda:0 unless told otherwise
                log.warning("device %s is not available here; using %s", device, default_device())
                device = None
        llm = load(pretrained, device=device or default_device(), dtype=None if dtype in (None, "auto") else dtype)
        if not isinstance(llm, LocalLLM):
            raise ValueError(f"pretrained={pretrained!r} is a remote server: lm-eval's local-completions backend "
                             "talks to servers; the llmkit backend needs a local model")
        self.llm = llm
        self._batch_size = 16 if str(batch_size).startswith("auto") else int(batch_size)
        self._max_length = min(int(max_length), llm.config.context_window) if max_length else llm.config.context_window
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = _flag(add_bos_token)

    # --------------------------------------------------------------------------- properties
    @property
    def tokenizer_name(self) -> str:
        return str(self.llm.name or "llmkit").replace("/", "__")

    @property
    def eot_token_id(self) -> int:
        eos = self.llm.tokenizer.eos_token_id
        return eos if eos is not None else self.llm._pad_id()

    @property
    def prefix_token_id(self) -> int:
        bos = self.llm.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        return self.llm.device

    # ----------------------------------------------------------------------------- tokens
    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        if add_special_tokens is None:
            bos = self.llm.tokenizer.bos_token
            add_special_tokens = False if bos and string.startswith(bos) else (
                self.add_bos_token if self.add_bos_token is not None else True)
        ids = self.llm.tokenize(string, add_special_tokens=add_special_tokens)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.llm.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    # ---------------------------------------------------------------------------- scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        results = []
        chunk = self.batch_size * 8
        for i in tqdm(range(0, len(pairs), chunk), desc="llmkit loglikelihood", disable=disable_tqdm):
            results += self.llm.loglikelihood_tokens(pairs[i:i + chunk], self.batch_size, max_len=self.max_length)
        out = [(r.logprob, r.is_greedy) for r in results]
        for (key, _, _), res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Disjoint windows of `max_length` tokens, each predicted from the token before it: lm-eval's
        own window functions, as its hf backend uses them."""
        pairs, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            windows = map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1))
            for ctx, cont in windows:
                pairs.append((ctx, cont))
                owners.append(i)
        totals = [0.0] * len(requests)
        if pairs:
            for owner, res in zip(owners, self.llm.loglikelihood_tokens(pairs, self.batch_size, max_len=self.max_length)):
                totals[owner] += res.logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -------------------------------------------------------------------------- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Batched generation per distinct set of generation options; contexts left-truncated to
        `max_length - max_gen_toks`; text cut at the first stop string (eos text included)."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        # like transformers' generate: stop on the model config's eos ids (not on chat end-of-turn
        # tokens, which LocalLLM also stops at), and on the stop strings, eos text included
        config_eos = self.llm.config.eos_token_id
        stop_ids = sorted({self.eot_token_id, *(config_eos if isinstance(config_eos, list) else
                                                [config_eos] if config_eos is not None else [])})
        groups: dict[str, list[int]] = {}
        options = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kw = dict(normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks))
            until = handle_stop_sequences(kw.pop("until", None), eos=eos)
            max_gen = int(kw.pop("max_gen_toks"))
            sample = bool(kw.pop("do_sample", False)) and float(kw.get("temperature") or 0) > 0
            temperature = float(kw.pop("temperature", 0) or 0) if sample else 0.0
            options.append((context, until, max_gen, temperature))
            groups.setdefault(repr((until, max_gen, temperature)), []).append(i)
        outputs: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="llmkit generate_until", disable=disable_tqdm)
        for members in groups.values():
            _, until, max_gen, temperature = options[members[0]]
            keep = max(1, self.max_length - max_gen)
            members = sorted(members, key=lambda i: -len(options[i][0]))
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                prompts = [self.tok_encode(options[i][0], left_truncate_len=keep) for i in batch]
                done = self.llm.complete(prompts, max_new_tokens=max_gen, temperature=temperature,
                                         stop=[u for u in until if u], ignore_eos=True, stop_token_ids=stop_ids)
                for i, completion in zip(batch, done):
                    outputs[i] = completion.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, completion.text)
                bar.update(len(batch))
        bar.close()
        return outputs
