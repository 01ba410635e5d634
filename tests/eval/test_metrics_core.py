"""Metrics against sacrebleu / rouge-score and hand-computed cases."""

from __future__ import annotations

import math

import pytest

from llmkit.eval import metrics as M
from tests.peers import peer


def test_exact_match_and_f1_by_hand():
    assert M.exact_match("The Cat sat!", "cat sat") == 1.0
    assert M.exact_match("a dog", ["cat", "the dog"]) == 1.0
    assert M.exact_match("dog", "cat") == 0.0
    # pred "the black cat sat" -> [black, cat, sat]; gold "a cat sat down" -> [cat, sat, down]
    # common 2: p = 2/3, r = 2/3, F1 = 2/3
    assert M.token_f1("the black cat sat", "a cat sat down") == pytest.approx(2 / 3)
    assert M.token_f1("x", ["y", "x"]) == 1.0
    assert M.accuracy([1, 2, 3], [1, 0, 3]) == pytest.approx(2 / 3)


def test_bleu_chrf_equal_sacrebleu():
    sacrebleu = peer("sacrebleu")
    preds = ["the cat is on the mat", "there is a dog in the garden today"]
    refs = [["the cat sat on the mat", "a cat is on the mat"], ["a dog is in the garden today", "the dog is outside"]]
    streams = [[r[0] for r in refs], [r[1] for r in refs]]
    assert M.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score)
    assert M.chrf(preds, refs) == pytest.approx(sacrebleu.corpus_chrf(preds, streams).score)
    assert M.bleu(["same words here and there"], ["same words here and there"]) == pytest.approx(100.0)


def test_rouge_equals_rouge_score_and_by_hand():
    rs = peer("rouge_score.rouge_scorer")
    preds, refs = ["the quick brown fox jumps"], ["the quick red fox jumped high"]
    scorer = rs.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = scorer.score(refs[0], preds[0])
    got = M.rouge(preds, refs)
    for key in got:
        assert got[key] == pytest.approx(expected[key].fmeasure)
    # by hand, ROUGE-1 with stemming: pred {the, quick, brown, fox, jump}, ref {the, quick, red, fox, jump, high}
    # overlap 4 -> P = 4/5, R = 4/6, F = 2PR/(P+R)
    p, r = 4 / 5, 4 / 6
    assert got["rouge1"] == pytest.approx(2 * p * r / (p + r))


def test_word_error_rate_by_hand():
    # reference 6 words; one substitution (sat -> sit) and one deletion (the) = 2 edits
    assert M.word_error_rate(["the cat sit on mat"], ["the cat sat on the mat"]) == pytest.approx(2 / 6)
    assert M.word_error_rate(["a b c"], ["a b c"]) == 0.0


def test_pass_at_k_matches_the_combinatorial_definition():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 4), (5, 5, 2), (7, 2, 6), (100, 13, 10)]:
        expected = 1.0 if n - c < k else 1 - math.comb(n - c, k) / math.comb(n, k)
        assert M.pass_at_k(n, c, k) == pytest.approx(expected)
    assert M.pass_at_k(10, 0, 1) == 0.0 and M.pass_at_k(4, 4, 1) == 1.0
    with pytest.raises(ValueError):
        M.pass_at_k(3, 4, 1)


def test_calibration_perplexity_bootstrap():
    # bins: [0.9, 0.9] both right -> |1 - 0.9| ; [0.2] wrong -> |0 - 0.2|; N = 3
    assert M.expected_calibration_error([0.9, 0.9, 0.2], [True, True, False]) == pytest.approx(
        2 / 3 * 0.1 + 1 / 3 * 0.2)
    assert M.perplexity(math.log(10) * 4, 4) == pytest.approx(10.0)
    assert M.bits_per_byte(math.log(2) * 8, 8) == pytest.approx(1.0)
    lo, hi = M.bootstrap_ci([1, 0, 1, 1, 0, 1, 1, 1], seed=3)
    assert lo <= 0.75 <= hi and (lo, hi) == M.bootstrap_ci([1, 0, 1, 1, 0, 1, 1, 1], seed=3)
