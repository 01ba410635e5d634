"""Objectives: what a training step minimises. The Trainer loop never changes; an objective is
``loss(model, batch) -> (loss, metrics)`` where `loss` is a scalar tensor averaged over the
batch's items and `metrics` holds extra numbers to log (plain floats or 0-dim tensors).

Here: next-token prediction (`CausalLM`, pretraining and SFT alike: SFT labels mask everything
but the assistant's turns), masked-token prediction (`MaskedLM`, encoders), classification
(`Classify`, any `Classifier`), and for encoder-decoders a target given its source (`Seq2SeqLM`,
fine-tuning T5) and T5's span corruption (`SpanCorruption`, whose batches `Seq2SeqLM` scores).
The alignment objectives (reward model, DPO, PPO/GRPO) live in `llmkit.align` and follow the same
protocol.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch

from ..models.loss import IGNORE_INDEX, cross_entropy
from ..models.transformer import Transformer


def _fuses_loss(model: torch.nn.Module) -> bool:
    """Whether `model` (perhaps inside DDP / torch.compile wrappers) is a `Transformer`, whose
    forward takes `labels`."""
    for _ in range(4):
        if isinstance(model, Transformer):
            return True
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if model is None:
            return False
    return False


class Objective(Protocol):
    """What the Trainer minimises. An objective may also define ``units(batch) -> int``, how many
    items `loss` averages over (target tokens, pairs): the Trainer then weights micro-batches and
    ranks by it, so that a step minimises the mean over its whole global batch however the batch is
    split; without it micro-batches weigh the same."""

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]: ...

    def tokens(self, batch: Any) -> int:
        """How many tokens of `batch` count towards throughput (tokens/s, MFU)."""
        ...


class CausalLM:
    """Next-token prediction. A batch is either a LongTensor (batch, seq+1) of packed tokens,
    inputs ``[:, :-1]`` and targets ``[:, 1:]``, or a dict with ``input_ids`` and ``labels``
    (labels already aligned with inputs; ``-100`` marks positions that do not count) and an
    optional ``attention_mask`` or ``segment_ids`` (packed examples)."""

    def split(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if isinstance(batch, torch.Tensor):
            return batch[:, :-1], batch[:, 1:], None
        ids, labels = batch["input_ids"], batch["labels"]
        return ids, labels, batch.get("attention_mask")

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        inputs, targets, mask = self.split(batch)
        kwargs = {}
        if mask is not None:
            kwargs["attention_mask"] = mask
        if isinstance(batch, dict) and batch.get("segment_ids") is not None:
            kwargs["segment_ids"] = batch["segment_ids"]  # packed examples
        if _fuses_loss(model):  # the model's own head + loss, without the (tokens, vocab) logits
            return model(inputs, labels=targets, **kwargs), {}
        return cross_entropy(model(inputs, **kwargs), targets), {}

    def tokens(self, batch: Any) -> int:
        _, targets, _ = self.split(batch)
        return int((targets != IGNORE_INDEX).sum()) if not isinstance(batch, torch.Tensor) else targets.numel()

    units = tokens  # the loss is the mean over target tokens


class MaskedLM:
    """BERT's masked-token prediction (Devlin et al. 2018). Of each row's positions that are not
    special tokens, `rate` (15%) are selected; of those 80% become the mask token, 10% a random
    token and 10% stay as they are; the loss is the cross-entropy on the selected positions only.

    A batch is a LongTensor of packed token rows (as `CausalLM` gets them; the last column, the
    next-token target there, is dropped) or a dict with ``input_ids`` and an ``attention_mask``.
    Training draws the masks from torch's RNG (so an exact resume replays them); evaluation uses
    a fixed generator, so that validation losses of different steps compare the same masks."""

    def __init__(self, mask_id: int, vocab_size: int, special_ids: Sequence[int] = (), rate: float = 0.15,
                 eval_seed: int = 0):
        if not 0.0 < rate < 1.0:
            raise ValueError(f"mask rate={rate} must be in (0, 1), e.g. 0.15")
        self.mask_id, self.vocab_size, self.rate, self.eval_seed = mask_id, vocab_size, rate, eval_seed
        self.special_ids = sorted(set(special_ids) | {mask_id})

    def split(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(batch, torch.Tensor):
            return batch[:, :-1], None
        return batch["input_ids"], batch.get("attention_mask")

    def mask(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs with the selected positions replaced, labels: the original token there, -100 elsewhere)."""
        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, device=ids.device, generator=generator)

        candidate = ~torch.isin(ids, torch.tensor(self.special_ids, device=ids.device))
        if attention_mask is not None:
            candidate &= attention_mask.bool()
        selected = (rand(*ids.shape) < self.rate) & candidate
        labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
        roll = rand(*ids.shape)
        inputs = torch.where(selected & (roll < 0.8), torch.full_like(ids, self.mask_id), ids)
        random_tokens = (rand(*ids.shape) * self.vocab_size).long().clamp(max=self.vocab_size - 1)
        inputs = torch.where(selected & (roll >= 0.8) & (roll < 0.9), random_tokens, inputs)
        return inputs, labels

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        ids, attention_mask = self.split(batch)
        generator = None
        if not model.training:
            generator = torch.Generator(device=ids.device).manual_seed(self.eval_seed)
        inputs, labels = self.mask(ids, attention_mask, generator)
        kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}
        if not bool((labels != IGNORE_INDEX).any()):  # nothing selected (a tiny batch): a zero that keeps the graph
            return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0, {}
        if _fuses_loss(model):
            return model(inputs, labels=labels, **kwargs), {}
        return cross_entropy(model(inputs, **kwargs), labels), {}

    def tokens(self, batch: Any) -> int:
        ids, attention_mask = self.split(batch)
        return int(attention_mask.sum()) if attention_mask is not None else ids.numel()

    def units(self, batch: Any) -> int:
        """The loss is a mean over selected positions: their expected number weighs micro-batches."""
        return max(1, round(self.tokens(batch) * self.rate))


class Classify:
    """Cross-entropy of a `Classifier`'s logits against class labels: a batch holds
    ``input_ids``, ``attention_mask`` and ``labels`` (batch,) — or (batch, seq) with -100 on
    positions that do not count, for token classification."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = model(batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]
        flat, targets = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        loss = torch.nn.functional.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX)
        counted = targets != IGNORE_INDEX
        accuracy = (flat.argmax(-1)[counted] == targets[counted]).float().mean()
        return loss, {"classify/accuracy": accuracy.detach()}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())


class Seq2SeqLM:
    """An encoder-decoder's target given its source: the cross-entropy of each target token given
    the source and the target before it. A batch is a dict with ``encoder_input_ids`` (and an
    optional ``encoder_attention_mask``, 0 on padding), the decoder's ``input_ids`` (the decoder
    start token, then the target shifted right) and ``labels`` (the target; -100 where a position
    does not count, e.g. padding)."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        source = {"encoder_input_ids": batch["encoder_input_ids"],
                  "encoder_attention_mask": batch.get("encoder_attention_mask")}
        if _fuses_loss(model):
            return model(batch["input_ids"], labels=batch["labels"], **source), {}
        return cross_entropy(model(batch["input_ids"], **source), batch["labels"]), {}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Source and target tokens: the encoder reads the one as the decoder learns the other."""
        mask = batch.get("encoder_attention_mask")
        source = int(mask.sum()) if mask is not None else batch["encoder_input_ids"].numel()
        return source + self.units(batch)

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        """The loss is the mean over target tokens."""
        return int((batch["labels"] != IGNORE_INDEX).sum())


class SpanCorruption:
    """T5's span corruption (Raffel et al. 2020, §3.1.4): in each row `density` (15%) of the
    tokens, in spans of mean length `mean_span` (3), are dropped from the encoder's input, each
    span replaced by one sentinel (<extra_id_0>, <extra_id_1>, …); the decoder learns to write
    every dropped span after its sentinel. Inputs and targets end with eos, and every row of a
    batch gets the same lengths (fixed counts of noise tokens and spans), so nothing is padded.

    A batch is a LongTensor of packed rows (the last column, a next-token target for `CausalLM`,
    is dropped). Training draws the spans from torch's RNG (an exact resume replays them);
    evaluation uses a fixed generator."""

    def __init__(self, sentinel_ids: Sequence[int], eos_id: int, start_id: int, density: float = 0.15,
                 mean_span: float = 3.0, eval_seed: int = 0):
        if not 0.0 < density < 1.0:
            raise ValueError(f"noise density={density} must be in (0, 1), e.g. 0.15")
        if mean_span < 1:
            raise ValueError(f"mean_span={mean_span} must be at least 1, e.g. 3")
        if not sentinel_ids:
            raise ValueError("span corruption needs sentinel tokens (<extra_id_0>, ...): the tokenizer has none")
        self.sentinel_ids, self.eos_id, self.start_id = list(sentinel_ids), eos_id, start_id
        self.density, self.mean_span, self.eval_seed = density, mean_span, eval_seed

    def counts(self, length: int) -> tuple[int, int]:
        """(noise tokens, spans) of a row of `length` tokens."""
        noise = min(max(round(length * self.density), 1), length - 1)
        spans = min(max(round(noise / self.mean_span), 1), noise, length - noise, len(self.sentinel_ids))
        return noise, spans

    def noise_mask(self, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(length,) bool: the dropped tokens, in spans alternating with kept stretches (kept first)."""
        noise, spans = self.counts(length)

        def lengths(items: int) -> torch.Tensor:  # `items` split into `spans` non-empty parts at random
            cuts = torch.randperm(items - 1, generator=generator)[:spans - 1] + 1
            bounds = torch.cat([torch.tensor([0]), cuts.sort().values, torch.tensor([items])])
            return bounds.diff()

        mask = torch.zeros(length, dtype=torch.bool)
        pos = 0
        for keep, drop in zip(lengths(length - noise).tolist(), lengths(noise).tolist()):
            pos += keep
            mask[pos:pos + drop] = True
            pos += drop
        return mask

    def corrupt(self, row: torch.Tensor, generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
        """(encoder input, decoder target) of one row of token ids, each ending with eos."""
        mask = self.noise_mask(len(row), generator).tolist()
        ids = row.tolist()
        source, target, span = [], [], -1
        for i, (tok, dropped) in enumerate(zip(ids, mask)):
            if dropped and (i == 0 or not mask[i - 1]):
                span += 1
                source.append(self.sentinel_ids[span])
                target.append(self.sentinel_ids[span])
            (target if dropped else source).append(tok)
        return source + [self.eos_id], target + [self.eos_id]

    def batch(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        pairs = [self.corrupt(r, generator) for r in rows[:, :-1].cpu()]
        source = torch.tensor([s for s, _ in pairs], device=rows.device)
        labels = torch.tensor([t for _, t in pairs], device=rows.device)
        start = torch.full((len(pairs), 1), self.start_id, device=rows.device)
        return {"encoder_input_ids": source, "input_ids": torch.cat([start, labels[:, :-1]], 1), "labels": labels}

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        generator = None if model.training else torch.Generator().manual_seed(self.eval_seed)
        return Seq2SeqLM().loss(model, self.batch(batch, generator))

    def tokens(self, batch: torch.Tensor) -> int:
        return batch[:, :-1].numel()

    def units(self, batch: torch.Tensor) -> int:
        """The loss is a mean over target tokens: sentinels, dropped tokens and eos of every row."""
        noise, spans = self.counts(batch.shape[1] - 1)
        return batch.shape[0] * (noise + spans + 1)
