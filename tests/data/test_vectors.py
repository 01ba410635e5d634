"""Word vectors before the transformer (llmkit.data.vectors): TF-IDF against scikit-learn,
word2vec on a corpus whose structure is known, run dirs, the `llmkit vectors` verb, and (slow)
word2vec against gensim's."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llmkit.data.vectors import (
    VectorConfig,
    WordVectors,
    analogy_accuracy,
    bow_matrix,
    build_vocab,
    fit_vectors,
    read_analogies,
    sentences_of,
    tfidf_matrix,
    tokenize,
)
from tests.peers import peer

DOCS = ["The cat sat on the mat. The cat ate.", "def get_item(self, key): return self._items[key]",
        "A dog and a cat; the dog barked twice.", "import os\nos.path.join(a, b)  # join paths",
        "the the the mat", "Nothing in common here!"]


def test_tokenize_is_lowercase_identifiers():
    assert tokenize("def Get_Item(self, x2): return 42 + __init__") == ["def", "get_item", "self", "x2", "return", "__init__"]


def test_tfidf_equals_scikit_learn():
    text = peer("sklearn.feature_extraction.text")
    docs = [tokenize(d) for d in DOCS]
    vocab, _ = build_vocab(docs, min_count=1)
    ref = text.TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None, vocabulary=vocab,
                               norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=False).fit_transform(DOCS)
    assert np.allclose(tfidf_matrix(docs, vocab), ref.toarray(), atol=1e-6)
    counts = text.CountVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None, vocabulary=vocab)
    assert np.array_equal(bow_matrix(docs, vocab), counts.fit_transform(DOCS).toarray())
    # the fitted model's word vectors are the matrix's columns
    model = fit_vectors(VectorConfig(method="tfidf", min_count=1), DOCS)
    assert model.words == vocab and np.allclose(model.vectors, ref.toarray().T, atol=1e-6)


def group_corpus(seed: int = 0, n_sentences: int = 600) -> tuple[list[str], list[str], list[str]]:
    """Sentences of 8 words, each drawn from one of two groups of 10 words: words co-occur only
    within their group."""
    rng = random.Random(seed)
    a = [f"alpha{i}" for i in range(10)]
    b = [f"beta{i}" for i in range(10)]
    texts = [" ".join(rng.choice(g) for _ in range(8)) for g in (rng.choice((a, b)) for _ in range(n_sentences))]
    return texts, a, b


def same_group_rate(model: WordVectors, groups: list[list[str]]) -> float:
    group_of = {w: i for i, g in enumerate(groups) for w in g}
    return float(np.mean([group_of[model.neighbours(w, 1)[0][0]] == group_of[w] for w in group_of]))


def test_word2vec_learns_which_words_co_occur():
    texts, a, b = group_corpus()
    config = VectorConfig(method="word2vec", min_count=1, dim=16, window=3, epochs=5, sample=0, seed=1)
    model = fit_vectors(config, texts)
    assert same_group_rate(model, [a, b]) == 1.0  # chance is 9/19
    # a control: the same vectors given to shuffled words (and the untrained start) carry no groups
    rng = np.random.default_rng(0)
    shuffled = WordVectors(model.words, model.vectors[rng.permutation(len(model))], config)
    untrained = WordVectors(model.words, rng.normal(size=model.vectors.shape), config)
    assert same_group_rate(shuffled, [a, b]) < 0.8 and same_group_rate(untrained, [a, b]) < 0.8
    # reproducible with a seed
    assert np.array_equal(fit_vectors(config, texts).vectors, model.vectors)


def test_vocab_options_and_save_load_round_trip(tmp_path):
    texts, _, _ = group_corpus(n_sentences=50)
    model = fit_vectors(VectorConfig(method="word2vec", min_count=1, max_vocab=12, dim=8, epochs=1), texts + ["rare"])
    assert len(model) == 12 and "rare" not in model
    for m in (model, fit_vectors(VectorConfig(method="bow", min_count=2), DOCS)):
        back = WordVectors.load(m.save(tmp_path / m.config.method))
        assert back.words == m.words and back.counts == m.counts and back.config == m.config
        assert np.array_equal(back.vectors, m.vectors)
        assert (back.docs is None) == (m.docs is None)
        assert back.neighbours(m.words[0], 3) == m.neighbours(m.words[0], 3)


def test_unknown_word_names_the_close_ones():
    model = fit_vectors(VectorConfig(method="bow", min_count=1), DOCS)
    with pytest.raises(ValueError, match=r"'dgo' is not in the vocabulary.*did you mean 'dog'"):
        model.neighbours("dgo")
    with pytest.raises(ValueError, match="unknown method 'tfid'; did you mean 'tfidf'"):
        fit_vectors(VectorConfig(method="tfid"), DOCS)


def test_analogy_excludes_its_inputs():
    model = WordVectors(["a", "b", "c", "d", "e"], np.array([[1, 0], [0, 1], [0, 1], [1, 0], [-1, 0]], float),
                        VectorConfig())
    assert [w for w, _ in model.analogy("a", "b", "c", k=2)] == ["d", "e"]


def test_cli_fit_neighbours_analogy(tmp_path, capsys):
    from llmkit.cli.main import main

    texts, _, _ = group_corpus(n_sentences=200)
    (tmp_path / "corpus.txt").write_text("\n".join(texts))
    run = tmp_path / "run"
    assert main(["vectors", "fit", "--method", "word2vec", "--texts", str(tmp_path / "corpus.txt"), "--out", str(run),
                 "--min-count", "1", "--dim", "8", "--epochs", "2"]) == 0
    assert "word2vec: 20 words x 8 dims" in capsys.readouterr().out
    assert main(["vectors", "neighbours", "--model", str(run), "alpha1", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.split()[0].startswith(("alpha", "beta")) for line in lines)
    assert main(["vectors", "analogy", "--model", str(run), "alpha1", "alpha2", "beta1", "-k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["vectors", "neighbours", "--model", str(run), "alpah1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not in the vocabulary" in err[0] and "did you mean 'alpha1'" in err[0]
    assert main(["vectors", "fit", "--method", "tfidf", "--out", str(tmp_path / "tf"), "--corpus-bytes", "100000"]) == 0
    assert "tfidf:" in capsys.readouterr().out
    assert main(["vectors", "neighbours", "--model", str(tmp_path / "nothing"), "x"]) == 2


@pytest.mark.slow
def test_word2vec_not_worse_than_gensim():
    """Same corpus, tokeniser, vocabulary, dim, window, negatives, epochs, subsampling and
    learning rate: our analogy accuracy on the shipped list and our neighbours' agreement with a
    second seed of ourselves are within noise of gensim's (run-to-run overlap between two seeds
    of the same implementation measures the noise)."""
    models = peer("gensim.models")
    from llmkit.data.corpus import stdlib_texts

    config = VectorConfig(method="word2vec", corpus_bytes=4_000_000, dim=64, window=5, negatives=5, epochs=5)
    texts = list(stdlib_texts(config.corpus_bytes))
    ours = [fit_vectors(VectorConfig(**{**config.__dict__, "seed": s}), texts) for s in (0, 1)]
    sentences = sentences_of([tokenize(t) for t in texts])
    theirs = []
    for seed in (0, 1):
        g = models.Word2Vec(sentences, vector_size=config.dim, window=config.window, negative=config.negatives,
                            epochs=config.epochs, min_count=config.min_count, max_final_vocab=config.max_vocab,
                            sg=1, hs=0, sample=config.sample, alpha=config.lr, min_alpha=config.lr * 1e-4,
                            seed=seed, workers=2)
        words = ours[0].words
        theirs.append(WordVectors(words, np.stack([g.wv[w] for w in words]), config))
    assert set(g.wv.index_to_key) == set(ours[0].words)
    probe = ours[0].words[50:550]  # frequent words, the very most frequent skipped

    def overlap(m1, m2, k=10):
        return float(np.mean([len({w for w, _ in m1.neighbours(p, k)} & {w for w, _ in m2.neighbours(p, k)}) / k
                              for p in probe]))

    analogies = read_analogies()
    acc_ours = [analogy_accuracy(m, analogies) for m in ours]
    acc_theirs = [analogy_accuracy(m, analogies) for m in theirs]
    figures = {"overlap ours-ours": overlap(*ours), "overlap gensim-gensim": overlap(*theirs),
               "overlap ours-gensim": overlap(ours[0], theirs[0]), "analogies ours": acc_ours,
               "analogies gensim": acc_theirs}
    print(figures)
    assert acc_ours[0][1] >= 15  # enough of the shipped analogies are in the vocabulary to score
    n = acc_ours[0][1]
    noise = 2 * np.sqrt(0.25 / n)  # two binomial standard errors at p = 0.5
    assert np.mean([a for a, _ in acc_ours]) >= np.mean([a for a, _ in acc_theirs]) - noise
    # ours agree with gensim about neighbours nearly as much as gensim agrees with itself
    assert figures["overlap ours-gensim"] >= 0.6 * figures["overlap gensim-gensim"]
