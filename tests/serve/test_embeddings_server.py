"""/v1/embeddings through the official `openai` client and `RemoteLLM`: the vectors are
`LocalLLM.embed`'s (floats and base64 alike); with ``--embedder`` a second model embeds for every
served name and /v1/models lists both; an encoder served alone embeds and refuses chat and
completions with a 400."""

from __future__ import annotations

import numpy as np
import pytest

from tests.peers import peer
from tests.serve.conftest import Running

openai = peer("openai")

TEXTS = ["The cat sits on the mat.", "Ünïcödé façade — naïve café in Zürich", "ok", "def f(x): return x"]
LONG = " ".join(["Retrieval stands on embeddings that keep their meaning."] * 40)  # > 256 MiniLM tokens


@pytest.fixture(scope="module")
def embedder(minilm):
    import llmkit

    return llmkit.load(minilm.path)


@pytest.fixture(scope="module")
def pair(served_llm, minilm):
    """A chat model ("chat", the tiny decoder) with all-MiniLM-L6-v2 as its embedder, loaded by
    name as `llmkit serve --embedder` does."""
    from llmkit.serve import ServerSettings, build_server

    built = build_server(served_llm, ServerSettings(name="chat", embedder=str(minilm.path), log_requests=False, embed_precision="fp32"))
    with Running(built.app) as running:
        running.built = built
        yield running


@pytest.fixture(scope="module")
def alone(embedder):
    """The encoder served by itself."""
    from llmkit.serve import ServerSettings, build_server

    built = build_server(embedder, ServerSettings(log_requests=False, embed_precision="fp32"))
    with Running(built.app) as running:
        running.built = built
        yield running


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)], dtype=np.float32)


def test_models_lists_both_and_the_banner_names_the_embedder(pair, embedder):
    cards = {m.id: m for m in client(pair).models.list().data}
    assert list(cards) == ["chat", "all-minilm-l6-v2"]
    assert cards["all-minilm-l6-v2"].generates is False and cards["chat"].generates is True
    assert cards["chat"].embedding_dim == cards["all-minilm-l6-v2"].embedding_dim == 384  # the embedder answers
    summary = pair.built.summary().splitlines()
    assert summary[0].startswith("serving chat (")
    assert summary[1].startswith("embeddings: all-minilm-l6-v2 (22,") and \
        "mean pooling, normalised, at most 256 tokens) for every model" in summary[1]


@pytest.mark.parametrize("name", ["all-minilm-l6-v2", "chat"])
def test_the_embedder_embeds_for_every_served_name_as_embed_does(pair, embedder, name):
    want = embedder.embed(TEXTS, precision="fp32")
    as_base64 = client(pair).embeddings.create(model=name, input=TEXTS)  # the client's default encoding
    as_floats = client(pair).embeddings.create(model=name, input=TEXTS, encoding_format="float")
    for r in (as_base64, as_floats):
        assert r.model == "all-minilm-l6-v2"  # says which model embedded
        np.testing.assert_allclose(vectors(r), want, atol=1e-5)
    assert as_base64.usage.prompt_tokens == sum(len(embedder.tokenize(t)) for t in TEXTS)
    ids = [embedder.tokenize(t) for t in TEXTS[:2]]  # token-id input, as OpenAI allows
    np.testing.assert_allclose(vectors(client(pair).embeddings.create(model=name, input=ids)), want[:2], atol=1e-5)


def test_long_inputs_are_refused_unless_truncation_is_asked(pair, embedder):
    with pytest.raises(openai.BadRequestError) as e:
        client(pair).embeddings.create(model="chat", input=["ok", LONG])
    assert e.value.body["code"] == "context_length_exceeded" and "256 tokens" in e.value.body["message"]
    assert '"truncate": true' in e.value.body["message"]
    r = client(pair).embeddings.create(model="chat", input=["ok", LONG], extra_body={"truncate": True})
    np.testing.assert_allclose(vectors(r), embedder.embed(["ok", LONG], precision="fp32"), atol=1e-5)
    with pytest.raises(openai.BadRequestError, match="dimensions=100"):
        client(pair).embeddings.create(model="chat", input="x", dimensions=100)


def test_chat_on_the_embedder_is_a_clear_400_and_the_chat_model_still_chats(pair):
    c = client(pair)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="all-minilm-l6-v2", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_generative" and e.value.body["param"] == "model"
    assert e.value.body["message"].startswith("all-minilm-l6-v2 is an encoder (bidirectional attention): it embeds "
                                              "text (LLM.embed, `llmkit embed`) and cannot generate")
    reply = c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.choices[0].message.content is not None


def test_remote_llm_embeds_through_the_server(pair, embedder):
    from llmkit.infer.remote import RemoteLLM

    remote = RemoteLLM(pair.url + "/v1", model="chat")
    got = remote.embed(TEXTS, batch_size=3)  # two requests, put back in input order
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, embedder.embed(TEXTS, precision="fp32"), atol=1e-5)
    assert remote.embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        remote.embed([1])
    # used as a local model is: long texts cut the same way by default, refused when asked
    np.testing.assert_allclose(remote.embed([LONG]), embedder.embed([LONG], precision="fp32"), atol=1e-5)
    with pytest.raises(ValueError, match="answered 400.*longer than"):
        remote.embed([LONG], truncate=False)
    with pytest.raises(ValueError, match="precision='bf16': a server embeds at the precision it was started with"):
        remote.embed(TEXTS, precision="bf16")


def test_an_encoder_served_alone_embeds_and_refuses_generation(alone, embedder):
    c = client(alone)
    np.testing.assert_allclose(vectors(c.embeddings.create(model="all-minilm-l6-v2", input=TEXTS)),
                               embedder.embed(TEXTS, precision="fp32"), atol=1e-5)
    with pytest.raises(openai.BadRequestError, match="is an encoder"):
        c.chat.completions.create(model="all-minilm-l6-v2", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="is an encoder"):
        c.completions.create(model="all-minilm-l6-v2", prompt="hi")
    summary = alone.built.summary()
    assert "all-minilm-l6-v2 is an encoder: it answers /v1/embeddings" in summary
    assert "KV cache" not in summary and "chat in your browser" not in summary  # nothing to chat with


def test_the_embedder_cannot_take_the_models_name(served_llm, embedder):
    from llmkit.serve import ServerSettings, build_server

    with pytest.raises(ValueError, match="--embedder .* is served as 'all-minilm-l6-v2', which the model already is"):
        build_server(served_llm, ServerSettings(name="all-minilm-l6-v2", log_requests=False), embedder=embedder)


def test_a_served_reward_model_refuses_chat(tiny_dirs, tmp_path):
    """A classifier's body has no output head: serving it must not sample hidden states as logits."""
    import llmkit
    from llmkit.align.reward import RewardModel, save_reward_model
    from llmkit.models.hf import load_pretrained
    from llmkit.serve import ServerSettings, build_server

    save_reward_model(RewardModel(load_pretrained(tiny_dirs["tiny-llama"])), tmp_path / "rm",
                      llmkit.load(tiny_dirs["tiny-llama"]).tokenizer)
    built = build_server(llmkit.load(tmp_path / "rm"), ServerSettings(log_requests=False))
    with Running(built.app) as running:
        c = client(running)
        card = c.models.list().data[0]
        assert card.generates is False
        with pytest.raises(openai.BadRequestError, match="classification model"):
            c.chat.completions.create(model=card.id, messages=[{"role": "user", "content": "hi"}])
        assert vectors(c.embeddings.create(model=card.id, input=["hi"])).shape == (1, 64)
