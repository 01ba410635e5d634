"""`llmkit eval` on encoders: a classifier is scored by its predicted label on the multiple-choice
tasks over its labels (the same accuracy as transformers' own reading of its files, through the
same results and report files), and everything an encoder cannot be scored on is refused before
any work, naming the task and what would work."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit.cli.main import main
from llmkit.data.tasks import load_task
import llmkit
from llmkit.eval.metrics import macro_f1
from llmkit.eval.runner import evaluate, load_run
from llmkit.infer.llm import EncoderError, load
from llmkit.models.classifier import Classifier, save_classifier
from llmkit.models.config import preset
from llmkit.models.hf import save_pretrained
from llmkit.models.transformer import Transformer
from llmkit.tokenizer import Tokenizer
from tests.peers import peer

LABELS = ["positive", "negative", "neutral"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see one_thread in tests/conftest.py


def _classifier(tok: Tokenizer, labels: list[str], seed: int) -> Classifier:
    """An untrained tiny-BERT classifier whose head reads what tells the texts apart: a random
    body pools every text to nearly the same vector, so the head is centred on their mean and
    scaled up. Its predictions then vary from text to text, and an evaluation that ignored the
    texts could not match them."""
    torch.manual_seed(seed)
    cfg = preset("tiny-bert", vocab_size=tok.vocab_size, max_seq_len=128, head="none", pooler=True)
    clf = Classifier(Transformer(cfg), num_labels=len(labels), labels=labels, seed=seed).eval()
    rows = [tok.encode(ex.prompt) for ex in load_task("sentiment", "train")]
    ids = torch.tensor([r + [tok.padding_id] * (max(map(len, rows)) - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (ids.shape[1] - len(r)) for r in rows])
    with torch.no_grad():
        pooled = torch.tanh(clf.model.pooler(clf.model(ids, mask)[:, 0]))
        clf.score.weight.div_(pooled.std(0).mean())
        clf.score.bias.copy_(-clf.score.weight @ pooled.mean(0))
    return clf


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A sentiment classifier, one whose labels are not sentiment's, and a bare BERT body, saved."""
    root = tmp_path_factory.mktemp("encoders")
    tok = Tokenizer.train(iter(ex.prompt for ex in load_task("sentiment", "train")), vocab_size=300, kind="wordpiece")
    out = {"clf": root / "clf", "other": root / "other", "body": root / "body"}
    save_classifier(_classifier(tok, LABELS, seed=0), out["clf"], tok)
    save_classifier(_classifier(tok, ["yes", "no", "maybe"], seed=1), out["other"], tok)
    body = Transformer(preset("tiny-bert", vocab_size=tok.vocab_size, max_seq_len=128, head="none", pooler=True))
    save_pretrained(body, out["body"])
    tok.save(out["body"])
    return out


def _expected(path) -> tuple[list[str], list[str]]:
    """(predictions, answers) on sentiment's test split, from transformers reading the same files."""
    transformers = peer("transformers")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    test = load_task("sentiment", "test")
    with torch.no_grad():
        logits = hf(**tok([ex.prompt for ex in test], return_tensors="pt", padding=True)).logits
    return [hf.config.id2label[i] for i in logits.argmax(-1).tolist()], [ex.answer for ex in test]


def test_classifier_is_scored_by_its_predicted_label(dirs, tmp_path):
    predictions, answers = _expected(dirs["clf"])
    assert len(set(predictions)) > 1  # the check below could not pass by answering one label
    acc = sum(p == a for p, a in zip(predictions, answers)) / len(answers)

    clf = llmkit.load(dirs["clf"])  # a LocalLLM that classifies
    assert clf.classifier is not None and clf.name == "clf"
    run = evaluate(clf, ["sentiment"], batch_size=7)  # batches that do not divide the 60 texts
    rec = run.tasks["sentiment"]
    assert rec.kind == "multiple_choice" and rec.primary == "acc"
    assert rec.metrics["acc"] == pytest.approx(acc)
    assert rec.metrics["macro_f1"] == pytest.approx(macro_f1(predictions, answers))
    assert rec.metrics["n"] == 60 and rec.chance == pytest.approx(1 / 3)
    assert [s["prediction"] for s in rec.samples] == predictions

    run.write(tmp_path / "run")  # the decoders' report files, read back
    again = load_run(tmp_path / "run")
    assert again.tasks["sentiment"].metrics["acc"] == pytest.approx(acc)
    assert "| sentiment | multiple_choice | acc |" in (tmp_path / "run" / "report.md").read_text()


def test_llmkit_eval_cli_scores_a_classifier(dirs, tmp_path, capsys):
    predictions, answers = _expected(dirs["clf"])
    assert main(["eval", "--model", str(dirs["clf"]), "--tasks", "sentiment", "--out", str(tmp_path / "ev")]) == 0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["tasks"]["sentiment"]["metrics"]["acc"] == pytest.approx(
        sum(p == a for p, a in zip(predictions, answers)) / len(answers))
    assert "macro_f1" in capsys.readouterr().out


@pytest.mark.parametrize("task, kind", [("arith", "generation"), ("perplexity", "perplexity"), ("code", "code")])
def test_classifier_refuses_tasks_it_cannot_answer_before_any_work(dirs, task, kind, monkeypatch):
    clf = llmkit.load(dirs["clf"])
    monkeypatch.setattr(clf, "classify", lambda *a, **k: pytest.fail("scored before refusing"))
    with pytest.raises(EncoderError, match=rf"task '{task}' \({kind}\): clf is a classifier, scored only on "
                                           r"multiple-choice tasks whose choices are its labels \(positive, negative, "
                                           r"neutral\), e.g. sentiment"):
        evaluate(clf, ["sentiment", task])


def test_classifier_with_other_labels_is_refused_naming_both(dirs, capsys):
    with pytest.raises(EncoderError, match="choices positive, negative, neutral, but classifier other has labels "
                                           "yes, no, maybe"):
        evaluate(llmkit.load(dirs["other"]), ["sentiment"])
    assert main(["eval", "--model", str(dirs["other"]), "--tasks", "sentiment"]) == 2
    assert "has labels yes, no, maybe" in capsys.readouterr().err


def test_encoder_body_is_refused_every_task(dirs, capsys):
    body = load(dirs["body"])
    with pytest.raises(EncoderError, match=r"tasks 'sentiment' \(multiple_choice\), 'arith' \(generation\): body is "
                                           r"an encoder .*objective=classify"):
        evaluate(body, ["sentiment", "arith"])
    assert main(["eval", "--model", str(dirs["body"]), "--tasks", "perplexity"]) == 2
    assert "task 'perplexity' (perplexity): body is an encoder" in capsys.readouterr().err


def test_minilm_is_refused_as_an_encoder(minilm):
    with pytest.raises(EncoderError, match=r"task 'code' \(code\): .* is an encoder"):
        evaluate(load(minilm.path), ["code"])
