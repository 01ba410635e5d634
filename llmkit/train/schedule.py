"""Learning-rate schedules as pure functions of the step (so that a resumed run gets exactly the
same learning rates), and the plan they follow: the number of steps, which a time budget may
shorten while the run goes (a re-plan, `Schedule.replan`).

A re-plan never restarts or cuts the schedule: the warm-up keeps its pace and the part of the decay
not yet run is spread evenly over the steps that remain, so the learning rate never leaps at the
re-plan point and the last step still ends the decay at lr·min_lr_ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SCHEDULES = ("cosine", "linear", "constant")


def lr_at(step: float, *, lr: float, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine",
          min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step `step` (0-based; a re-planned `Schedule` passes fractional
    positions): linear warmup from lr/warmup to lr, then cosine or linear decay that reaches
    lr·min_lr_ratio at the last step, `total_steps - 1` ("constant" keeps lr)."""
    if warmup_steps and step < warmup_steps:
        return lr * min(1.0, (step + 1) / warmup_steps)  # between two whole steps it must not pass lr
    if schedule == "constant":
        return lr
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    min_lr = lr * min_lr_ratio
    if schedule == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_lr + (lr - min_lr) * (1 - progress)  # exactly min_lr at the end
    raise ValueError(f"schedule={schedule!r} is not supported: use {', '.join(SCHEDULES)}")


@dataclass
class Schedule:
    """The learning rate of every step of a run whose total may be re-planned.

    `steps` is the first plan (train.steps); `replans` holds ``(at, total)``: from optimizer step
    `at` (0-based) on, the run ends after `total` steps. Each step maps to a position on the first
    plan's schedule: itself until the first re-plan, then the positions still ahead spread evenly
    over the steps that remain, so the last step always lands on the schedule's end."""

    lr: float
    steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    min_lr_ratio: float = 0.1
    replans: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: Any) -> "Schedule":
        """The schedule of a `TrainConfig`, not yet re-planned."""
        return cls(lr=config.lr, steps=config.steps, warmup_steps=config.warmup_steps, kind=config.schedule,
                   min_lr_ratio=config.min_lr_ratio)

    @property
    def total(self) -> int:
        """The steps the run now means to take."""
        return self.replans[-1][1] if self.replans else self.steps

    def position(self, step: int) -> float:
        """Where step `step` lies on the first plan's schedule (0 … steps - 1)."""
        end = float(self.steps - 1)
        first, first_pos, last = 0, 0.0, self.steps - 1  # the segment now: first step, its position, last step
        for at, total in self.replans:
            if step < at:
                break
            first_pos = _along(at, first, first_pos, last, end, self.warmup_steps)
            first, last = at, total - 1
        return _along(step, first, first_pos, last, end, self.warmup_steps)

    def lr_at(self, step: int) -> float:
        return lr_at(self.position(step), lr=self.lr, total_steps=self.steps, warmup_steps=self.warmup_steps,
                     schedule=self.kind, min_lr_ratio=self.min_lr_ratio)

    def replan(self, at: int, total: int) -> None:
        """From step `at` (the next one to run) on, end after `total` steps (at least one more)."""
        if total <= at:
            raise ValueError(f"a re-plan at step {at} must leave at least one step: total={total}")
        if self.replans and at < self.replans[-1][0]:
            raise ValueError(f"re-plans go forward: step {at} comes before the last re-plan ({self.replans[-1][0]})")
        self.replans.append((at, total))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "total": self.total, "replans": [list(r) for r in self.replans]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Follow a saved plan. A checkpoint saved under another first plan (train.steps changed
        on resume) keeps the new one: the user asked for it."""
        if state.get("steps") != self.steps:
            return
        self.replans = [(int(a), int(t)) for a, t in state.get("replans", [])]


def _along(step: int, first: int, first_pos: float, last: int, end: float, warmup: int) -> float:
    """Position of `step` on a segment that runs from step `first` (at `first_pos`) to step `last`
    (at `end`). A warm-up not yet finished keeps its pace of one position per step (squeezing it
    would make the learning rate leap), and only the decay after it is spread over the steps left;
    when fewer steps are left than the warm-up needs, the warm-up goes on until the last step, which
    takes the schedule's end value (a fall, never a leap up)."""
    if step >= last:
        return end  # exactly: the last step must get the schedule's end value, not a rounding of it
    if first_pos < warmup:
        ramp_end = first + math.ceil(warmup - first_pos)  # the step whose position finishes the warm-up
        if step < ramp_end:
            return first_pos + (step - first)  # when the run ends inside the warm-up, the last step still decays
        first, first_pos = ramp_end, first_pos + (ramp_end - first)
    return first_pos + (end - first_pos) * (step - first) / (last - first)


__all__ = ["SCHEDULES", "Schedule", "lr_at"]
