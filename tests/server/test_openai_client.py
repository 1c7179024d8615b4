"""The official `openai` client against the real server: models, chat, streaming, completions, options."""
from __future__ import annotations

import httpx
import pytest

from .conftest import MODEL_NAME, SESSION_LEN, wait_all_blocks_free

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_lists_the_served_model(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert models.data[0].owned_by == "opsctl"
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_health(server):
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_chat_completion(client):
    resp = client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=32, temperature=0)
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion" and resp.created > 0
    assert resp.model == MODEL_NAME
    [choice] = resp.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "The capital of France is Paris."
    assert choice.finish_reason == "stop"
    assert resp.usage.completion_tokens == 8 and resp.usage.prompt_tokens > 10
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


@pytest.mark.parametrize("content", [
    "What is the capital of France?",
    "请用中文介绍一下北京的历史和文化。",
], ids=["english", "chinese"])
def test_streamed_chat_equals_non_streamed(client, content):
    messages = [{"role": "user", "content": content}]
    full = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=32, temperature=0)
    text = full.choices[0].message.content
    deltas, finish, roles = [], None, []
    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=32, temperature=0,
                                            stream=True)
    for chunk in stream:
        assert chunk.id.startswith("chatcmpl-") and chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                deltas.append(c.delta.content)
            finish = c.finish_reason or finish
    streamed = "".join(deltas)
    assert roles == ["assistant"]
    assert streamed == text and streamed.encode("utf-8").decode("utf-8") == text
    assert "\ufffd" not in streamed
    assert finish == full.choices[0].finish_reason
    if content.startswith("请"):
        assert any(ord(ch) > 0x2E80 for ch in text), f"expected CJK characters in {text!r}"


def test_stream_include_usage(client):
    stream = client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=5, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"


def test_text_completion(client):
    resp = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert resp.id.startswith("cmpl-") and resp.object == "text_completion"
    [choice] = resp.choices
    assert choice.text and choice.finish_reason == "length"
    assert resp.usage.completion_tokens == 12 and resp.usage.prompt_tokens == 4
    stream = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=12, temperature=0,
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == choice.text


def test_completion_prompt_shapes(client, server):
    ids = server.engine.tokenizer("Once upon a time").input_ids
    by_text = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=6, temperature=0)
    by_ids = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    batch = client.completions.create(model=MODEL_NAME, prompt=["Once upon a time", "The sky is"], max_tokens=4,
                                      temperature=0, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text == by_text.choices[0].text[:len(batch.choices[0].text)]
    assert batch.usage.completion_tokens == 16


def test_n_choices_with_seed(client):
    kw = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Tell me a short story."}], max_tokens=12,
              temperature=1.0, seed=1234, n=3)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # seeded
    assert len({c.message.content for c in a.choices}) > 1  # seed + i per choice
    assert 3 <= a.usage.completion_tokens <= 36 and a.usage.prompt_tokens == b.usage.prompt_tokens < 60


def test_streamed_n_choices(client):
    stream = client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=8, temperature=0, n=2,
                                            stream=True)
    texts, finishes = ["", ""], [None, None]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finishes[c.index] = c.finish_reason or finishes[c.index]
    assert texts == ["The capital of France is Paris."] * 2 and finishes == ["stop", "stop"]


def test_multi_token_stop(client):
    resp = client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=32, temperature=0,
                                          stop=["France is", "zzz"])
    assert resp.choices[0].message.content == "The capital of "
    assert resp.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=32, temperature=0,
                                              stop="France is", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "The capital of "


def test_ignore_eos_and_max_completion_tokens(client):
    resp = client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_completion_tokens=20,
                                          temperature=0, extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 20 and resp.choices[0].finish_reason == "length"


def test_sampling_options_accepted(client):
    resp = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                                    {"role": "assistant", "content": "Hello."},
                                    {"role": "user", "content": "Name a color."}],
        max_tokens=8, temperature=0.7, top_p=0.9, seed=7, presence_penalty=0.5, frequency_penalty=0.5, user="u1",
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "skip_special_tokens": True,
                    "some_unknown_field": {"x": 1}})
    assert resp.choices[0].finish_reason in ("stop", "length") and resp.usage.completion_tokens >= 1


def test_chat_logprobs(client, server):
    resp = client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=8, temperature=0,
                                          logprobs=True, top_logprobs=3)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    assert "".join(t.token for t in content[:-1]) == resp.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode("utf-8", "replace") == t.token
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token  # greedy: the top one
    stream = client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=8, temperature=0,
                                            logprobs=True, top_logprobs=1, stream=True)
    streamed = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]


def test_completion_logprobs(client):
    resp = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=5,
                                     temperature=0, logprobs=2)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == resp.choices[0].text
    assert lp.text_offset[0] == 0 and all(len(d) == 2 for d in lp.top_logprobs)


def test_tokenize_and_detokenize(server):
    r = httpx.post(server.url + "/tokenize", json={"prompt": "Hello world"})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == len(body["tokens"]) == 2 and body["max_model_len"] == SESSION_LEN
    r = httpx.post(server.url + "/detokenize", json={"tokens": body["tokens"]})
    assert r.status_code == 200 and r.json() == {"prompt": "Hello world"}
    chat = httpx.post(server.url + "/tokenize", json={"messages": FRANCE}).json()
    assert chat["count"] > 10


def test_no_block_left_behind(server):
    wait_all_blocks_free(server.engine)
