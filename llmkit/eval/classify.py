"""Encoders in `evaluate`. An encoder cannot score a text's log-likelihood or generate, so it is
scored as a text classifier: on multiple-choice tasks whose choices are its labels (the built-in
``sentiment``), by the label it predicts for each prompt, into the same records, reports and
comparisons as a decoder's choice by log-likelihood (``acc``, and ``macro_f1``). Anything else
asked of an encoder is refused before any work, with what it can be scored on.

    llm = llmkit.load("runs/clf")               # a *ForSequenceClassification directory, or its run
    run = evaluate(llm, ["sentiment"])          # run.tasks["sentiment"].metrics["acc"]
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from ..infer.llm import EncoderError
from .harness import TaskResult, _chunks
from .metrics import accuracy, macro_f1

# what a decoder does for each kind of task, which an encoder cannot
_NEEDS = {"multiple_choice": "scores each choice by its log-likelihood", "generation": "generates its answer",
          "perplexity": "predicts every next token", "code": "writes code"}


def classifier_of(llm: Any):
    """The sequence `Classifier` of a model `llmkit.load` gave for a classification directory,
    or None (a language model, an encoder body, a server)."""
    clf = getattr(llm, "classifier", None)
    if clf is not None and clf.per_token:
        raise EncoderError(f"{getattr(llm, 'name', 'the model')} is a token classifier (a label per token): llmkit "
                           "eval scores sequence classifiers on whole texts")
    return clf


def check_scorable(llm: Any, specs: Sequence[Any], split: str, data_dir: str | os.PathLike | None,
                   shots: int = 0, chat: bool = False) -> None:
    """Refuse, before any work, the tasks an encoder cannot be scored on (`EncoderError`): every
    task for an encoder that is not a classifier; for a classifier, every task but multiple choice
    over its own labels (few-shot and chat prompts too: it reads each text alone). For an
    encoder-decoder, perplexity tasks and chat prompts without a chat template (ValueError).
    Nothing for a decoder."""
    from ..data.labelled import classification_tasks
    from ..data.tasks import load_task

    clf = classifier_of(llm)
    if clf is not None:
        labels = clf.labels
        wrong = [spec for spec in specs if spec.kind != "multiple_choice"]
        if wrong:
            raise EncoderError(
                f"{_tasks(wrong)}: {llm.name} is a classifier, scored only on multiple-choice tasks "
                f"whose choices are its labels ({', '.join(labels)}), e.g. {', '.join(classification_tasks())}")
        if shots or chat:
            raise ValueError(f"{llm.name} is a classifier: it reads each text alone, so --shots and --chat do not "
                             "apply; leave them out")
        for spec in specs:
            choices = {tuple(ex.choices) for ex in load_task(spec.name, split, data_dir)}
            if len(choices) != 1:
                raise EncoderError(f"task {spec.name!r} has different choices for each question, but classifier "
                                   f"{llm.name} answers from its fixed labels ({', '.join(labels)}): score it on "
                                   f"one of {', '.join(classification_tasks())}")
            task_labels = next(iter(choices))
            if set(task_labels) != set(labels):
                raise EncoderError(f"task {spec.name!r} has choices {', '.join(task_labels)}, but classifier "
                                   f"{llm.name} has labels {', '.join(labels)}: score it on a task whose choices "
                                   "are its labels, or fine-tune a classifier on this task (objective=classify)")
        return
    config = getattr(llm, "config", None)
    if config is not None and getattr(config, "is_seq2seq", False):
        name = getattr(llm, "name", None) or config.family
        texts = [spec for spec in specs if spec.kind == "perplexity"]
        if texts:
            raise ValueError(f"{_tasks(texts)}: {name} is an encoder-decoder, which scores a target given a source, "
                             "not a text on its own: leave perplexity tasks out (generation and multiple choice apply)")
        if chat and getattr(getattr(llm, "tokenizer", None), "chat_template", None) is None:
            raise ValueError(f"--chat: {name} is an encoder-decoder without a chat template, whose source is the task "
                             "prompt as is: leave --chat out (or give its tokenizer a chat template)")
    if config is not None and not getattr(config, "causal", True):
        name = getattr(llm, "name", None) or config.family
        raise EncoderError(
            f"{_tasks(specs)}: {name} is an encoder (bidirectional attention), which cannot be scored on a task where "
            f"a model {' or '.join(sorted({_NEEDS[s.kind] for s in specs}))}. An encoder is scored as a classifier, on "
            f"the multiple-choice tasks with fixed labels ({', '.join(classification_tasks())}): fine-tune one "
            "(llmkit finetune --model MODEL --data builtin:sentiment --method full objective=classify) and evaluate "
            "its run")


def _tasks(specs: Sequence[Any]) -> str:
    """``task 'arith' (generation)``, or several of them."""
    named = ", ".join(f"{s.name!r} ({s.kind})" for s in specs)
    return f"task{'s' if len(specs) > 1 else ''} {named}"


def run_classification(llm: Any, name: str, examples: Sequence[Any], batch_size: int = 16,
                       progress: bool = False) -> TaskResult:
    """Each example's prompt classified: `acc` counts predicted labels equal to the answer,
    `macro_f1` averages the F1 of every label (a classifier that always answers one label scores
    its share of the answers in `acc` but much less here)."""
    predictions: list[str] = []
    for i in _chunks(len(examples), batch_size, progress, name):
        predictions += llm.classify([ex.prompt for ex in examples[i:i + batch_size]], batch_size)
    answers = [ex.answer for ex in examples]
    samples = [{"id": ex.id, "prompt": ex.prompt, "choices": list(ex.choices), "prediction": pred,
                "answer": ex.answer, "score": float(pred == ex.answer)} for ex, pred in zip(examples, predictions)]
    return TaskResult(name, {"acc": accuracy(predictions, answers), "macro_f1": macro_f1(predictions, answers),
                             "n": len(examples)}, samples)
