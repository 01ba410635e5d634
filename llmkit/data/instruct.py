"""Instruction and chat data for supervised fine-tuning.

Three JSONL row formats, one conversation per line:

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    {"instruction": "...", "input": "...", "output": "..."}          (Alpaca; input optional)
    {"prompt": "...", "completion": "..."}

Every row becomes messages, rendered with the model's chat template. The loss covers only what
the assistant says (its content and the template's end-of-turn marker): labels are -100 on system
and user turns, on the template's role headers and on padding. Token boundaries come from the
tokenizer's character offsets on the whole rendered text, so the mask follows exactly the tokens
the model sees. The built-in tasks (arith, sorting, stdlib-qa, sentiment) are an embedded
instruction set with their fixed splits: ``builtin`` or ``builtin:arith,sorting`` as the data path.

An encoder-decoder (T5) learns each assistant turn as a target given a source (`encode_pairs`,
`collate_pairs`): the conversation before the turn as `llm.chat` would give it to the model, so a
prompt/completion row's source is its prompt, as `llm.generate(prompt)` encodes it.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..models.loss import IGNORE_INDEX
from ..models.texts import cut_keeping_end
from ..tokenizer.chat import fit_history, source_ids
from .dataset import DataError
from .jsonl import BadRow, read_jsonl  # noqa: F401 (BadRow: part of this module's API)

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
BUILTIN_INSTRUCT_TASKS = ("arith", "sorting", "stdlib-qa", "sentiment")

Messages = list[dict[str, str]]


def row_to_messages(row: Any) -> Messages:
    """One JSONL row (any of the three formats) as chat messages; ValueError says what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("field 'messages' must be a non-empty list of {role, content} objects")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
            if m["role"] not in ROLES:
                raise ValueError(f"messages[{i}].role is {m['role']!r}: use one of {', '.join(ROLES)}")
            if not isinstance(m["content"], str):
                raise ValueError(f"messages[{i}].content must be a string")
            if m["role"] == "assistant" and not m["content"].strip():
                raise ValueError(f"messages[{i}] is an empty assistant turn")
            out.append({"role": m["role"], "content": m["content"]})
    elif "instruction" in row or "output" in row:
        instruction, output, extra = row.get("instruction"), row.get("output"), row.get("input") or ""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("field 'instruction' must be a non-empty string (Alpaca format)")
        if not isinstance(output, str) or not output.strip():
            raise ValueError("field 'output' must be a non-empty string (Alpaca format): it is the assistant turn")
        if not isinstance(extra, str):
            raise ValueError("field 'input' must be a string (Alpaca format)")
        out = [{"role": "user", "content": instruction + ("\n\n" + extra if extra.strip() else "")},
               {"role": "assistant", "content": output}]
        if isinstance(row.get("system"), str) and row["system"]:
            out.insert(0, {"role": "system", "content": row["system"]})
    elif "prompt" in row or "completion" in row:
        prompt, completion = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, str):
            raise ValueError("field 'prompt' must be a string")
        if not isinstance(completion, str) or not completion.strip():
            raise ValueError("field 'completion' must be a non-empty string: it is the assistant turn")
        out = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    else:
        raise ValueError(f"unknown row format (fields: {', '.join(row) or 'none'}): give 'messages', "
                         "Alpaca's 'instruction'/'output', or 'prompt'/'completion'")
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("the conversation has no assistant turn to learn from")
    return out


def read_instructions(path: str | os.PathLike, skip_bad_rows: bool = False,
                      builtin_train_size: int | None = None) -> tuple[list[Messages], list[BadRow]]:
    """Conversations of a JSONL file (or the embedded set: ``builtin[:task,...]``, whose generated
    tasks draw `builtin_train_size` fresh examples each when it is given). Bad rows are returned
    with their line numbers when `skip_bad_rows`, else raise one error listing them."""
    text = str(path)
    if is_builtin(text):
        return builtin_instructions("train", builtin_tasks(text), train_size=builtin_train_size), []
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist (or use --data builtin for the embedded "
                                "instruction set)")
    return read_jsonl(path, lambda row: [row_to_messages(row)], skip_bad_rows)


def is_builtin(spec: str) -> bool:
    return spec == "builtin" or spec.startswith("builtin:")


def builtin_tasks(spec: str, known: Sequence[str] = BUILTIN_INSTRUCT_TASKS, what: str = "instruction") -> tuple[str, ...]:
    """The tasks of a ``builtin[:task,...]`` data path (all of `known` for plain ``builtin``)."""
    if ":" not in spec:
        return tuple(known)
    names = tuple(t.strip() for t in spec.split(":", 1)[1].split(",") if t.strip())
    unknown = [t for t in names if t not in known]
    if unknown or not names:
        raise DataError(f"builtin {what} task {unknown[0] if unknown else '(none)'!r} is not known: use "
                        f"some of {', '.join(known)}, e.g. builtin:arith,sorting")
    return names


def split_validation(rows: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, validation): a seeded `fraction` (at least one row, when there are two) held out."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(rows) * fraction)) if len(rows) > 1 else 0
    return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]


def builtin_instructions(split: str = "train", tasks: Sequence[str] = BUILTIN_INSTRUCT_TASKS,
                         train_size: int | None = None) -> list[Messages]:
    """The checkable built-in tasks as conversations: the task prompt is the user turn, the answer
    the assistant turn (for multiple choice: the right choice). Splits as the tasks' own; with
    `train_size`, the train split of each generated task (arith, sorting) is that many fresh
    examples from its generator instead, none of them in its dev or test split (the hand-written
    and docstring tasks keep their shipped train split)."""
    from .build_tasks import GENERATORS, fresh_train
    from .tasks import load_task

    out = []
    for name in tasks:
        if split == "train" and train_size is not None and name in GENERATORS:
            try:
                rows = [(r["prompt"], r["answer"]) for r in fresh_train(name, train_size)]
            except ValueError as e:
                raise DataError(f"data.builtin_train_size={train_size}: {e}") from None
        else:
            rows = [(ex.prompt, ex.answer) for ex in load_task(name, split)]
        out.extend([{"role": "user", "content": p}, {"role": "assistant", "content": a}] for p, a in rows)
    return out


# ------------------------------------------------------------------------------ tokenisation
def encode_conversation(tokenizer, messages: Messages, max_len: int | None = None,
                        last_only: bool = False) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: labels equal the ids on assistant tokens (only
    the last assistant turn's with `last_only`) and are -100 elsewhere. Long conversations are
    cut at `max_len` tokens."""
    full = tokenizer.apply_chat_template(messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True) if i else \
            tokenizer.apply_chat_template([], add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[:i + 1])
        if not (full.startswith(upto) and upto.startswith(before)):
            raise DataError("the chat template does not render conversations prefix by prefix, so the assistant "
                            "turns cannot be located: use a template that does (as ChatML, Llama 3 and the "
                            "llmkit default do)")
        spans.append((len(before), len(upto)))
    if last_only:
        spans = spans[-1:]
    enc = tokenizer.backend.encode(full, add_special_tokens=False)
    ids = list(enc.ids)
    labels = [IGNORE_INDEX] * len(ids)
    for j, (start, end) in enumerate(enc.offsets):
        if end > start and any(s <= start < e for s, e in spans):
            labels[j] = ids[j]
    if max_len is not None and len(ids) > max_len:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


@dataclass
class SFTExample:
    input_ids: np.ndarray
    labels: np.ndarray


def encode_all(tokenizer, conversations: Sequence[Messages], max_len: int) -> tuple[list[SFTExample], int]:
    """Encoded conversations with at least one assistant token left after cutting; and how many
    were dropped because the cut left none."""
    out, dropped = [], 0
    for messages in conversations:
        ids, labels = encode_conversation(tokenizer, messages, max_len + 1)
        # inputs are ids[:-1], targets labels[1:]: at least one target must count
        if not any(l != IGNORE_INDEX for l in labels[1:]):
            dropped += 1
            continue
        out.append(SFTExample(np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)))
    return out, dropped


@dataclass
class Seq2SeqExample:
    source: np.ndarray  # the encoder's tokens, as `llm.tokenize(source)` gives them (T5: ending with eos)
    target: np.ndarray  # the decoder's targets, ending with eos (what ends a generation)


def conversation_pairs(tokenizer, messages: Messages, max_len: int | None = None) -> list[tuple[list[int], str]]:
    """(source ids, target text) of a conversation, one per assistant turn, the source being the
    conversation before the turn exactly as `llm.chat` gives it to an encoder-decoder
    (`source_ids`: the chat template ready for the answer, or the turns' text one per line; a
    prompt/completion row's source is its prompt as is). Past `max_len` tokens the oldest turns go
    first, as chat fits a long history (`fit_history`), then the source's first tokens stay."""
    out = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        history = list(messages[:i])
        if max_len is not None:
            history = fit_history(history, max_len, lambda h: len(source_ids(tokenizer, h)))
        ids = source_ids(tokenizer, history)
        out.append((cut_keeping_end(ids, max_len) if max_len is not None else ids, m["content"]))
    return out


def encode_pairs(tokenizer, conversations: Sequence[Messages], max_len: int) -> tuple[list[Seq2SeqExample], int]:
    """Encoder-decoder examples of conversations (`conversation_pairs`), sources fitted to `max_len`
    tokens; and how many assistant turns were dropped because their target (with its eos) does not
    fit (cut, the model would learn to stop mid-answer)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token, which ends an encoder-decoder's targets: use a tokenizer "
                        "with one (T5's </s>)")
    out, dropped = [], 0
    for messages in conversations:
        for src, target in conversation_pairs(tokenizer, messages, max_len):
            tgt = tokenizer.encode(target, add_special_tokens=False) + [eos]
            if len(tgt) > max_len:
                dropped += 1
                continue
            out.append(Seq2SeqExample(np.asarray(src, dtype=np.int64), np.asarray(tgt, dtype=np.int64)))
    if dropped:
        log.warning("%d target(s) longer than data.max_len=%d tokens dropped: raise data.max_len to keep them",
                    dropped, max_len)
    return out, dropped


# ---------------------------------------------------------------------------------- batches
def collate_pairs(examples: Sequence[Seq2SeqExample], pad_id: int, start_id: int) -> dict[str, torch.Tensor]:
    """A batch for `Seq2SeqLM`: sources right-padded with `pad_id` (encoder_attention_mask 0
    there), labels the targets (-100 on padding) and the decoder's input_ids `start_id` then the
    target shifted right."""
    n = len(examples)
    src_width, tgt_width = max(len(e.source) for e in examples), max(len(e.target) for e in examples)
    source = torch.full((n, src_width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, src_width), dtype=torch.long)
    decoder = torch.full((n, tgt_width), pad_id, dtype=torch.long)
    labels = torch.full((n, tgt_width), IGNORE_INDEX, dtype=torch.long)
    for r, e in enumerate(examples):
        source[r, :len(e.source)], mask[r, :len(e.source)] = torch.from_numpy(e.source), 1
        labels[r, :len(e.target)] = torch.from_numpy(e.target)
        decoder[r, 0] = start_id
        decoder[r, 1:len(e.target)] = torch.from_numpy(e.target[:-1])
    return {"encoder_input_ids": source, "encoder_attention_mask": mask, "input_ids": decoder, "labels": labels}


def collate(examples: Sequence[SFTExample], pad_id: int, packed_len: int | None = None) -> dict[str, torch.Tensor]:
    """A batch for `CausalLM`: inputs ids[:-1], labels labels[1:] (aligned), right padding with
    labels -100 and attention mask 0. With `packed_len`, examples are concatenated into rows of
    that length instead, with `segment_ids` keeping attention and positions within each example."""
    if packed_len is None:
        width = max(len(e.input_ids) for e in examples) - 1
        ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for r, e in enumerate(examples):
            n = len(e.input_ids) - 1
            ids[r, :n] = torch.from_numpy(e.input_ids[:-1])
            labels[r, :n] = torch.from_numpy(e.labels[1:])
            mask[r, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    used = 0
    for e in examples:
        n = len(e.input_ids) - 1
        if used + n > packed_len and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append((e.input_ids[:-1][:packed_len], e.labels[1:][:packed_len]))
        used += min(n, packed_len)
    ids = torch.full((len(rows), packed_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), packed_len), IGNORE_INDEX, dtype=torch.long)
    segments = torch.zeros((len(rows), packed_len), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, (i, l) in enumerate(row, 1):
            ids[r, at:at + len(i)], labels[r, at:at + len(i)] = torch.from_numpy(i), torch.from_numpy(l)
            segments[r, at:at + len(i)] = s
            at += len(i)
        segments[r, at:] = len(row) + 1  # padding: a segment of its own
    return {"input_ids": ids, "labels": labels, "segment_ids": segments}


@dataclass
class SFTLoader:
    """Endless, seeded, resumable batches of `batch_size` examples (reshuffled every epoch; with
    several ranks each takes its own share). `collate_fn(examples)` makes the batch when given
    (preference pairs use it); else `collate`."""

    examples: list[SFTExample]
    batch_size: int
    pad_id: int
    seed: int = 0
    packed_len: int | None = None
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    pos: int = 0
    collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]] | None = None
    _order: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.examples:
            raise DataError("no training examples")
        self._shuffle()

    def _shuffle(self) -> None:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        self._order = order[self.rank::self.world_size] or order

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        picked = []
        while len(picked) < self.batch_size:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._shuffle()
            picked.append(self.examples[self._order[self.pos]])
            self.pos += 1
        if self.collate_fn is not None:
            return self.collate_fn(picked)
        return collate(picked, self.pad_id, self.packed_len)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._shuffle()


class SFTValidation:
    """Held-out examples for the Trainer's validation loss, in fixed batches (made by
    `collate_fn(examples)` when given, else `collate`)."""

    def __init__(self, examples: list[Any], pad_id: int,
                 collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]] | None = None):
        self.examples, self.pad_id = examples, pad_id
        self.collate_fn = collate_fn or (lambda chunk: collate(chunk, pad_id))

    def __len__(self) -> int:
        return len(self.examples)

    def batches(self, batch_size: int, limit: int) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
        n = min(len(self.examples), limit)
        for start in range(0, n, batch_size):
            chunk = self.examples[start:min(n, start + batch_size)]
            batch = self.collate_fn(chunk)
            yield batch, int((batch["labels"] != IGNORE_INDEX).sum())
