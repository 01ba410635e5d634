"""Re-planning under a time budget: when training is slower than the plan needs, the Trainer
shrinks the remaining steps so that the learning-rate schedule still ends (at lr·min_lr_ratio)
inside the budget. Time is a fake clock that the objective advances, so the machine's real
speed (and load) plays no part."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from llmkit.models import Transformer, preset
from llmkit.train import CausalLM, Schedule, TrainConfig, Trainer
from tests.train.test_trainer import ToyLoader


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny steps run ~20x faster on one thread than on two contended ones (other tests share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class TimedCausalLM(CausalLM):
    """Causal LM whose every training forward pass costs `seconds(step)` on the fake clock
    (evaluation passes a quarter of that)."""

    def __init__(self, clock: FakeClock, seconds):
        self.clock, self.seconds, self.calls = clock, seconds, 0

    def loss(self, model, batch):
        if model.training:
            self.calls += 1
            self.clock.t += self.seconds(self.calls)
        else:
            self.clock.t += self.seconds(self.calls) / 4
        return super().loss(model, batch)


class Bar:
    """Stands in for tqdm, remembering the total it was left with."""

    instances: list["Bar"] = []

    def __init__(self, total=None, initial=0, **_):
        self.total, self.n = total, initial
        Bar.instances.append(self)

    def update(self, n=1):
        self.n += n

    def set_postfix(self, **_):
        pass

    def refresh(self):
        pass

    def close(self):
        pass


class Replans:
    def __init__(self):
        self.events = []

    def on_replan(self, trainer, event):
        self.events.append(event)


def trainer(run_dir, clock, seconds, callbacks=(), **train):
    torch.manual_seed(0)
    cfg = dict(steps=100, micro_batch=2, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, eval_every=0, save_every=0,
               sample_prompts=[], device="cpu", precision="fp32", time_budget_s=10.0)
    cfg.update(train)
    return Trainer(Transformer(preset("tiny-llama")), TimedCausalLM(clock, seconds), ToyLoader(batch=2, seq_len=16), TrainConfig(**cfg),
                   run_dir, callbacks=callbacks, clock=clock)


def lrs(t: Trainer) -> dict[int, float]:
    return {h["step"]: h["lr"] for h in t.history}


def test_slow_training_is_replanned_so_the_schedule_ends_in_time(tmp_path, monkeypatch, caplog):
    """0.25 s a step against a 10 s budget: 100 planned steps cannot fit (40 could). The run is
    re-planned once it has timed a few steps, said so, ends its decay at min lr inside the
    budget, moves the progress bar, and saves the new total for a resume."""
    monkeypatch.setattr("llmkit.train.trainer.tqdm", Bar)
    Bar.instances.clear()
    clock, seen = FakeClock(), Replans()
    t = trainer(tmp_path / "run", clock, lambda _: 0.25, callbacks=[seen], save_every=5, keep_last=100)
    with caplog.at_level(logging.INFO, logger="llmkit.train.trainer"):
        summary = t.fit()

    assert len(seen.events) == 1
    event = seen.events[0]
    total = event["to_steps"]
    assert event["from_steps"] == 100 and 20 <= total < 40  # 40 fit at 0.25 s; some room is kept
    assert event["tokens_per_s"] == pytest.approx(2 * 16 / 0.25)  # 2 rows of 16 predicted tokens a step
    replan_lines = [r.getMessage() for r in caplog.records if "re-planned" in r.getMessage()]
    assert len(replan_lines) == 1 and f"re-planned to {total} steps" in replan_lines[0]
    assert replan_lines[0].startswith("training is slower than planned (128 tok/s measured")

    # the run took the new total, ended inside the budget and was not cut off by it
    assert summary["steps"] == summary["scheduled_steps"] == total and summary["planned_steps"] == 100
    assert not summary["stopped_early"]
    assert t.history[-1]["elapsed_s"] <= 10.0
    # the last step ends the decay; the learning rate never jumps up after the warm-up
    lr = lrs(t)
    assert lr[total] == pytest.approx(1e-3 * 0.1, rel=1e-12)
    after_warmup = [lr[s] for s in range(11, total + 1)]
    assert all(b <= a for a, b in zip(after_warmup, after_warmup[1:]))
    # before the re-plan (and at its step) the learning rates are the first plan's: cosine over steps 10..99
    at = event["step"]
    first_plan = Schedule(lr=1e-3, steps=100, warmup_steps=10)
    for s in range(1, at + 2):
        assert lr[s] == pytest.approx(first_plan.lr_at(s - 1), rel=1e-12)
    # the progress bar was moved to the new total and filled
    assert Bar.instances[-1].total == total and Bar.instances[-1].n == total

    # the checkpoints after the re-plan hold the new total
    ckpts = tmp_path / "run" / "checkpoints"
    state = json.loads((ckpts / f"step_{total:06d}" / "state.json").read_text())
    assert state["schedule"]["total"] == total and state["schedule"]["replans"] == [[at, total]]

    # a resume from a checkpoint after the re-plan follows the saved plan: same learning rates, same end
    mid = (total // 5 - 1) * 5
    assert mid > at
    (ckpts / "latest").write_text(f"step_{mid:06d}\n")
    resumed = trainer(tmp_path / "run", FakeClock(), lambda _: 0.25, time_budget_s=None)
    again = resumed.fit(resume=True)
    assert again["steps"] == total and again["scheduled_steps"] == total
    assert [h["step"] for h in resumed.history] == list(range(mid + 1, total + 1))
    assert lrs(resumed) == pytest.approx({s: lr[s] for s in range(mid + 1, total + 1)}, rel=1e-12)


def test_a_machine_that_becomes_busy_is_noticed_and_the_schedule_still_ends(tmp_path):
    """Fast for 20 steps (0.05 s), then four times slower: the plan of 100 steps in 10 s held at
    first and is re-planned once the slowdown shows, still ending at min lr inside the budget."""
    clock, seen = FakeClock(), Replans()
    t = trainer(tmp_path / "run", clock, lambda n: 0.05 if n <= 20 else 0.2, callbacks=[seen])
    summary = t.fit()
    assert seen.events and all(e["step"] > 20 for e in seen.events)
    assert summary["steps"] == summary["scheduled_steps"] < 100
    assert t.history[-1]["elapsed_s"] <= 10.0 and not summary["stopped_early"]
    lr = lrs(t)
    assert lr[summary["steps"]] == pytest.approx(1e-4, rel=1e-12)
    decay = [lr[s] for s in range(11, summary["steps"] + 1)]
    assert all(b <= a for a, b in zip(decay, decay[1:]))


def test_no_replan_when_the_plan_fits(tmp_path):
    clock, seen = FakeClock(), Replans()
    t = trainer(tmp_path / "run", clock, lambda _: 0.1, callbacks=[seen], steps=40, warmup_steps=4)
    summary = t.fit()  # 40 x 0.1 s = 4 s of a 10 s budget
    assert seen.events == [] and summary["steps"] == 40 and summary["replans"] == []
    assert lrs(t)[40] == pytest.approx(1e-4, rel=1e-12)


def test_schedule_replan_is_continuous_and_ends_at_min_lr():
    s = Schedule(lr=1.0, steps=100, warmup_steps=10, min_lr_ratio=0.1)
    before = [s.lr_at(i) for i in range(100)]
    s.replan(40, 60)
    s.replan(50, 55)
    after = [s.lr_at(i) for i in range(55)]
    assert after[:40] == before[:40]
    assert after[40] == before[40]  # the re-plan step keeps the learning rate it had
    assert after[54] == pytest.approx(0.1, rel=1e-12) and s.total == 55
    assert all(b < a for a, b in zip(after[40:], after[41:]))
    # cosine from the point reached: step 40 sits at progress 30/89, so steps 40..59 cover the rest evenly
    s2 = Schedule(lr=1.0, steps=100, warmup_steps=10, min_lr_ratio=0.1)
    s2.replan(40, 60)
    p = 30 / 89 + (1 - 30 / 89) * 5 / 19
    assert s2.lr_at(45) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * p)))
    # a re-plan inside the warm-up keeps its pace (lr/warmup a step: a squeezed warm-up would leap
    # towards the peak) and spreads only the decay over what is left; the quickstart's shape:
    for to in (40, 86):
        w = Schedule(lr=1.0, steps=307, warmup_steps=15)
        w.replan(6, to)
        lrs = [w.lr_at(i) for i in range(to)]
        rises = [b - a for a, b in zip(lrs, lrs[1:])]
        assert max(rises) <= 1 / 15 + 1e-12, (to, max(rises))
        assert lrs[:15] == pytest.approx([(i + 1) / 15 for i in range(15)])  # the warm-up as first planned
        assert lrs[-1] == pytest.approx(0.1)
        assert all(b < a for a, b in zip(lrs[15:], lrs[16:]))  # then the decay, strictly down to its end
    # fewer steps left than the warm-up needs: it keeps its pace until the last step, which ends the schedule
    for to in (6, 9, 11):
        w = Schedule(lr=1.0, steps=100, warmup_steps=10)
        w.replan(3, to)
        ramp = [w.lr_at(i) for i in range(to)]
        assert ramp[:-1] == pytest.approx([(i + 1) / 10 for i in range(to - 1)]) and ramp[-1] == 0.1, (to, ramp)
    for kind in ("cosine", "linear"):  # the last step is the end value exactly, not a rounding of it
        assert Schedule(lr=1.0, steps=100, warmup_steps=10, kind=kind).lr_at(99) == 0.1
    with pytest.raises(ValueError):
        w.replan(5, 5)
