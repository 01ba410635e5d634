"""The one training loop. Everything a run needs is written once here: gradient accumulation,
clipping, schedules, precision, distributed wrapping, validation, sample generations, progress,
metrics, checkpoints and exact resume. What is minimised comes from the `Objective`.

With a time budget (`train.time_budget_s`) the loop watches its own speed: when the steps left
will not fit in the time left, it re-plans to fewer steps (`Schedule.replan`), so that the
learning-rate schedule still ends at its last step instead of being cut off near its peak.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as D
from ..models.moe import clear_router, moe_layers, record_router, router_losses
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .logger import MetricsLogger
from .objectives import Objective
from .optim import build_optimizer
from .precision import autocast, choose_precision, matmul_flops
from .schedule import Schedule

log = logging.getLogger(__name__)

REPLAN_MARGIN = 0.9  # a re-plan keeps 10% of the time in hand, so that small swings of speed do not re-plan again
REPLAN_AFTER = 6  # steps run before the first re-plan: the first warms up, and one slow step must not decide alone


class Callback(Protocol):
    """What a run may be told as it goes; a callback defines any of these methods."""

    def on_step(self, trainer: "Trainer", step: int, metrics: dict[str, Any]) -> None: ...

    def on_checkpoint(self, trainer: "Trainer", step: int, path: Path) -> None: ...

    def on_replan(self, trainer: "Trainer", event: dict[str, Any]) -> None:
        """The time budget shortened the run: `event` holds step, from_steps, to_steps,
        tokens_per_s (measured), needed_tokens_per_s (what the old plan needed) and seconds_left."""


class Trainer:
    """Train `model` on batches from `train_loader` (an iterator with ``state_dict()`` /
    ``load_state_dict()``), scoring `val_data` (a sequence of token arrays) now and then.
    `clock` (seconds, default `time.perf_counter`) times the steps and the budget; tests pass a fake one."""

    def __init__(self, model: nn.Module, objective: Objective, train_loader: Any, config: TrainConfig,
                 run_dir: str | os.PathLike, val_data: Any = None, tokenizer: Any = None,
                 compat: dict[str, Any] | None = None, flops_per_token: float | None = None,
                 info: D.DistInfo | None = None, callbacks: Sequence[Any] = (),
                 clock: Callable[[], float] = time.perf_counter):
        self.config, self.objective, self.loader = config, objective, train_loader
        self.clock = clock
        self.schedule = Schedule.from_config(config)
        self.run_dir = Path(run_dir)
        self.val_data, self.tokenizer = val_data, tokenizer
        self.info = info or D.init_distributed(config.device)
        self.compat = {**(compat or {}), "world_size": self.info.world_size, "micro_batch": config.micro_batch,
                       "grad_accum": config.grad_accum}
        self.flops_per_token = flops_per_token
        self.callbacks = list(callbacks)
        self.device = self.info.device
        self.precision = choose_precision(config.precision, self.device)
        self.base_model = model.to(self.device)
        if config.activation_checkpointing:
            enable_activation_checkpointing(self.base_model)
        # a mixture of experts: its routers' losses join the objective's, and their statistics are logged
        self.router = bool(moe_layers(self.base_model))
        self.model = D.wrap_model(self.base_model, config.distributed, self.info)
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay, config.betas)
        self.forward_model = torch.compile(self.model) if config.compile else self.model
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.step = 0
        self.tokens_seen = 0
        self._best: tuple[float, dict[str, torch.Tensor], int] | None = None  # (val loss, weights, step)
        self._since_best = 0
        self.history: list[dict[str, Any]] = []

    # ---------------------------------------------------------------------- resume
    def resume(self) -> int:
        """Continue from the newest complete checkpoint in the run dir; returns its step."""
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: {self.run_dir} has no complete checkpoint to resume from")
        state = load_checkpoint(path, self.model, self.optimizer, self.compat)
        self.loader.load_state_dict(state["loader"])
        self.step, self.tokens_seen = state["step"], state["tokens"]
        self.schedule.load_state_dict(state.get("schedule", {}))
        log.info("resumed from %s (step %d) of a %d-step plan", path, self.step, self.schedule.total)
        return self.step

    def _checkpoint(self) -> None:
        state = {"tokens": self.tokens_seen, "loader": self.loader.state_dict(), "compat": self.compat,
                 "schedule": self.schedule.state_dict()}
        path = save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, state, self.config.keep_last)
        self._tell("on_checkpoint", self.step, path)

    def _tell(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(self, *args)

    # ------------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg, info, clock, schedule = self.config, self.info, self.clock, self.schedule
        torch.manual_seed(cfg.seed + info.rank)
        start = self.resume() if resume else 0
        logger = MetricsLogger(self.run_dir, enabled=info.is_main, resume_step=start if resume else None)
        peak = matmul_flops(self.device.type, torch.float32) * max(1, info.world_size)
        bar = tqdm(total=schedule.total, initial=start, disable=not info.is_main or None, dynamic_ncols=True,
                   desc="train")
        t0 = clock()
        record_router(self.base_model, self.router)  # on for this fit only: the logits hold graphs
        window_t, window_tokens = t0, 0
        step_times: list[float] = []  # seconds of each optimizer step of this session
        pauses = 0.0  # seconds of this session's evaluations, samples and checkpoints
        last: dict[str, Any] = {}
        stopped_early = False
        try:
            while self.step < schedule.total:
                began = clock()
                metrics = self._train_step()
                self.step += 1
                window_tokens += metrics["tokens"]
                self.tokens_seen += metrics["tokens"]
                now = clock()
                step_times.append(now - began)
                tok_s = window_tokens / max(now - window_t, 1e-9)
                window_t, window_tokens = now, 0
                mfu = (self.flops_per_token * tok_s / peak) if self.flops_per_token else None
                last = {"loss": metrics["loss"], "lr": metrics["lr"], "grad_norm": metrics["grad_norm"],
                        "tokens": self.tokens_seen, "tokens_per_s": tok_s, "elapsed_s": now - t0}
                if mfu is not None:
                    last["mfu"] = mfu
                last.update(metrics["extra"])
                if self.step % cfg.log_every == 0 or self.step == schedule.total:
                    logger.log(self.step, **last)
                self.history.append({"step": self.step, **last})
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2e}", tok_s=f"{tok_s:.0f}",
                                **({"mfu": f"{mfu:.0%}"} if mfu is not None else {}))
                out_of_time = cfg.time_budget_s is not None and self._slowest(now - t0) >= cfg.time_budget_s
                final = self.step == schedule.total or out_of_time
                paused = clock()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and not final:
                    if self._early_stop(self._evaluate(logger)):
                        stopped_early = True
                        log.info("early stopping at step %d: no better validation loss in %d evaluations",
                                 self.step, cfg.early_stopping)
                        break
                if cfg.sample_every and self.step % cfg.sample_every == 0 and not final:
                    self._samples(logger)
                if cfg.save_every and self.step % cfg.save_every == 0 and not final:
                    self._checkpoint()
                pauses += clock() - paused
                self._tell("on_step", self.step, last)
                if out_of_time:
                    stopped_early = self.step < schedule.total
                    if stopped_early and info.is_main:
                        log.warning("the time budget of %.0f s ran out at step %d of %d, before the learning-rate "
                                    "schedule ended", cfg.time_budget_s, self.step, schedule.total)
                    break
                if cfg.time_budget_s is not None and cfg.replan and self.step < schedule.total:
                    seconds_left = cfg.time_budget_s - self._slowest(clock() - t0)
                    if self._replan_if_late(seconds_left, step_times, pauses, metrics["tokens"]):
                        bar.total = schedule.total
                        bar.refresh()
            val = self._evaluate(logger)
            if self._best is not None and cfg.restore_best and (val is None or val > self._best[0]):
                self._restore(self._best[1])
                log.info("restored the weights of step %d (validation loss %.4f)", self._best[2], self._best[0])
                val = self._best[0]
            samples = self._samples(logger)
            self._checkpoint()
        finally:
            record_router(self.base_model, False)
            bar.close()
            logger.close()
        return {"steps": self.step, "tokens": self.tokens_seen, "train_loss": last.get("loss"),
                "final_val_loss": val, "samples": samples, "elapsed_s": clock() - t0,
                "stopped_early": stopped_early, "precision": self.precision,
                "tokens_per_s": last.get("tokens_per_s"), "mfu": last.get("mfu"),
                "planned_steps": schedule.steps, "scheduled_steps": schedule.total,
                "replans": [list(r) for r in schedule.replans], "final_lr": last.get("lr")}

    def _slowest(self, seconds: float) -> float:
        """This rank's `seconds`, or the most of any rank's under torchrun (so that all decide alike)."""
        return D.all_reduce_max(seconds, self.device) if self.info.enabled else seconds

    def _replan_if_late(self, seconds_left: float, step_times: list[float], pauses: float,
                        tokens_per_step: int) -> bool:
        """Re-plan to fewer steps when the steps left will not fit in `seconds_left` at the speed
        measured so far; True when it did. The speed is that of the recent steps (a quarter of
        those timed, at least 5), so that a machine that became busier is noticed soon, plus this
        session's evaluations and checkpoints spread over its steps. Under torchrun the slowest
        rank's speed decides, on every rank alike."""
        cfg, schedule = self.config, self.schedule
        timed = step_times[1:]  # the first step warms up (allocations, kernel choice)
        if len(timed) < REPLAN_AFTER - 1 or seconds_left <= 0:  # the same on every rank: they agree to skip
            return False
        recent = timed[-max(5, len(timed) // 4):]
        step_s = sum(recent) / len(recent)
        done = len(step_times)
        if pauses > 0:
            per_step = step_s + pauses / done
        elif cfg.eval_every and self.val_data is not None:
            # no evaluation timed yet: a forward pass costs about a third of a training step
            per_step = step_s + step_s * cfg.eval_batches / (3 * cfg.grad_accum) / cfg.eval_every
        else:
            per_step = step_s
        per_step = self._slowest(per_step)
        left = schedule.total - self.step
        fit = int(seconds_left // per_step) if per_step > 0 else left  # steps that fit in the time left
        if fit >= left:
            return False
        new_total = self.step + max(1, int(fit * REPLAN_MARGIN))
        if new_total >= schedule.total:
            return False
        event = {"step": self.step, "from_steps": schedule.total, "to_steps": new_total,
                 "tokens_per_s": tokens_per_step / per_step,
                 "needed_tokens_per_s": left * tokens_per_step / seconds_left,
                 "seconds_left": seconds_left}
        schedule.replan(self.step, new_total)
        if self.info.is_main:
            log.warning("training is slower than planned (%.0f tok/s measured, %.0f needed for %d more steps in "
                        "%.0f s): re-planned to %d steps so that the learning-rate schedule ends in time",
                        event["tokens_per_s"], event["needed_tokens_per_s"], left, seconds_left, new_total)
        self._tell("on_replan", event)
        return True

    def _train_step(self) -> dict[str, Any]:
        cfg = self.config
        lr = self.schedule.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        batches = [_to_device(next(self.loader), self.device) for _ in range(cfg.grad_accum)]
        weights = self._weights(batches)
        total = torch.zeros((), device=self.device)
        tokens = 0
        extra: dict[str, Any] = {}  # the objective's own metrics (DPO's reward margins, ...), averaged
        for micro, (batch, weight) in enumerate(zip(batches, weights)):
            with D.no_sync(self.model, micro < cfg.grad_accum - 1), autocast(self.precision, self.device):
                loss, metrics = self.objective.loss(self.forward_model, batch)
                minimised = loss
                if self.router:
                    router = router_losses(self.base_model)
                    if router is not None:
                        if router.penalty is not None:
                            minimised = loss + router.penalty.to(loss.dtype)
                        metrics = {**metrics, **router.metrics()}
            scaled = minimised * weight
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            if self.router:
                clear_router(self.base_model)  # what an activation-checkpointing recompute recorded
            total += loss.detach() * weight
            tokens += self.objective.tokens(batch)
            for k, v in metrics.items():
                if isinstance(v, list):  # per-expert shares: averaged element by element
                    extra[k] = [a + b / cfg.grad_accum for a, b in zip(extra.get(k, [0.0] * len(v)), v)]
                else:
                    extra[k] = extra.get(k, 0.0) + float(v) / cfg.grad_accum
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = D.all_reduce_mean(total).item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} at step {self.step + 1}: lower train.lr "
                                     f"(now {cfg.lr}) or raise train.warmup_steps")
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        return {"loss": loss, "lr": lr, "grad_norm": float(norm), "tokens": tokens * self.info.world_size,
                "extra": extra}

    def _weights(self, batches: list[Any]) -> list[float]:
        """Each micro-batch's weight in the step's loss: its share of the items (tokens, pairs)
        of the whole global batch, times the world size because DDP and FSDP average gradients
        over ranks. Then the step minimises the global batch's mean however it is split over
        micro-batches and ranks (SFT rows differ in length). Equal weights when the objective
        does not count its items."""
        units = getattr(self.objective, "units", None)
        if units is None:
            return [1.0 / len(batches)] * len(batches)
        counts = [units(b) for b in batches]
        total = int(D.all_reduce_sum(torch.tensor(float(sum(counts)), device=self.device)).item())
        return [c * self.info.world_size / max(total, 1) for c in counts]

    # ------------------------------------------------------------ early stopping
    def _early_stop(self, val: float | None) -> bool:
        """Track the best validation loss (keeping its trainable weights when they are to be
        restored); True once `early_stopping` evaluations in a row brought no improvement."""
        if not self.config.early_stopping or val is None:
            return False
        if self._best is None or val < self._best[0]:
            weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad} \
                if self.config.restore_best else {}
            self._best, self._since_best = (val, weights, self.step), 0
            return False
        self._since_best += 1
        return self._since_best >= self.config.early_stopping

    def _restore(self, weights: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w)

    # -------------------------------------------------------------- eval, samples
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss over the first `eval_batches` micro-batches (same on every rank)."""
        if self.val_data is None or len(self.val_data) == 0:
            return None
        cfg = self.config
        n = min(len(self.val_data), cfg.eval_batches * cfg.micro_batch)
        self.model.eval()
        losses, weights = [], []
        if hasattr(self.val_data, "batches"):  # ready-made (batch, weight) pairs, e.g. SFT examples
            pairs = self.val_data.batches(cfg.micro_batch, n)
        else:  # a sequence of packed token rows
            pairs = ((torch.stack([torch.as_tensor(self.val_data[i])
                                   for i in range(start, min(n, start + cfg.micro_batch))]),
                      min(n, start + cfg.micro_batch) - start) for start in range(0, n, cfg.micro_batch))
        for batch, weight in pairs:
            with autocast(self.precision, self.device):
                loss, _ = self.objective.loss(self.model, _to_device(batch, self.device))
            losses.append(loss.float().item())
            weights.append(weight)
        self.model.train()
        return sum(l * w for l, w in zip(losses, weights)) / sum(weights)

    def _evaluate(self, logger: MetricsLogger) -> float | None:
        val = self.evaluate()
        if val is not None:
            logger.log(self.step, val_loss=val, val_ppl=math.exp(min(val, 50.0)))
            log.info("step %d: validation loss %.4f (perplexity %.2f)", self.step, val, math.exp(min(val, 50.0)))
        return val

    def _samples(self, logger: MetricsLogger) -> list[dict[str, str]]:
        """Seeded sample generations from the prompts (rank 0; not under FSDP, whose shards would
        need every rank)."""
        cfg = self.config
        if self.tokenizer is None or not cfg.sample_prompts or not self.info.is_main:
            return []
        if self.info.enabled and cfg.distributed == "fsdp":
            return []
        from ..infer.llm import LocalLLM

        model = D.unwrap(self.base_model)
        model_cfg = getattr(model, "config", None)
        if model_cfg is not None and (model_cfg.is_encoder or model_cfg.is_seq2seq):
            return []  # an encoder does not generate; an encoder-decoder does not yet
        llm = LocalLLM(model, self.tokenizer)
        out = []
        with torch.no_grad():
            for i, prompt in enumerate(cfg.sample_prompts):
                # a seed per prompt: with one seed for all, a model that has not yet learned to use
                # its context draws the same tokens after every prompt
                text = llm.generate(prompt, max_new_tokens=cfg.sample_tokens, temperature=0.8, top_p=0.95,
                                    seed=cfg.seed + i, truncate_prompt=True)
                out.append({"prompt": prompt, "text": text})
                logger.text(self.step, f"sample/{prompt[:20]}", prompt + text)
        model.train()
        return out


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them."""
    from torch.utils.checkpoint import checkpoint

    for block in model.model.layers:
        forward = block.forward

        def wrapped(*args, _forward=forward, _block=block, **kwargs):
            if torch.is_grad_enabled() and _block.training:
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = wrapped
