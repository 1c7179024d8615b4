"""The API's fields pinned for every endpoint and mode, through the official openai client.

For chat and text completions, streamed and not, n = 1 and 2, every way a choice ends (EOS, a stop
string with and without include_stop_str_in_output, a stop token id, max_tokens): the text, the
finish_reason of every choice, and usage (prompt tokens as /tokenize counts them, completion tokens
as the sum over choices, total) on the response or, streamed, on the chunk that finishes the last
choice, or on OpenAI's separate last chunk when stream_options.include_usage is set. The expected
texts come from one greedy reference answer, cut where each ending says it must end.
"""
from __future__ import annotations

import httpx
import pytest

from .conftest import MODEL_NAME

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"
ENDPOINTS = ("chat", "completions")


@pytest.fixture(scope="module")
def reference(server):
    """Per endpoint: the greedy answer when nothing stops it early, its token ids and the prompt's count."""
    import openai

    out = {}
    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120) as client:
        chat = client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, max_tokens=64, temperature=0)
        text = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0)
    tok = server.engine.tokenizer
    chat_prompt = httpx.post(server.url + "/tokenize", json={"messages": FRANCE}).json()["count"]
    text_prompt = httpx.post(server.url + "/tokenize", json={"prompt": PROMPT}).json()["count"]
    for name, resp, content, prompt_count in (
            ("chat", chat, chat.choices[0].message.content, chat_prompt),
            ("completions", text, text.choices[0].text, text_prompt)):
        out[name] = {"text": content, "finish": resp.choices[0].finish_reason, "prompt_tokens": prompt_count,
                     "completion_tokens": resp.usage.completion_tokens,
                     "ids": tok(content, add_special_tokens=False).input_ids}
    # The chat answer ends on EOS ("stop"), the completion runs into max_tokens ("length").
    assert out["chat"]["finish"] == "stop" and out["completions"]["finish"] == "length"
    assert out["chat"]["prompt_tokens"] == chat.usage.prompt_tokens
    assert out["completions"]["prompt_tokens"] == text.usage.prompt_tokens
    return out


def _case(ref: dict, case: str):
    """(extra request fields, expected text, expected finish_reason, expected completion tokens or None)."""
    text, ids = ref["text"], ref["ids"]
    if case == "natural":  # EOS for chat, max_tokens for completions
        return {}, text, ref["finish"], ref["completion_tokens"]
    if case == "length":
        return {"max_tokens": 3}, None, "length", 3
    word = text.split()[2]  # a word in the middle of the answer
    cut = text.index(word)
    if case == "stop_string":
        return {"stop": [word, "zzz-never"]}, text[:cut], "stop", None
    if case == "stop_string_included":
        return {"stop": word, "include_stop_str_in_output": True}, text[:cut + len(word)], "stop", None
    if case == "stop_token_id":
        # The answer's third token: generation ends on it (it is not shown, as vLLM does).
        return {"stop_token_ids": [ids[2]]}, None, "stop", 3
    raise AssertionError(case)


CASES = ("natural", "length", "stop_string", "stop_string_included", "stop_token_id")


def _create(client, endpoint: str, stream: bool, n: int, extra: dict, include_usage: bool | None):
    fields = {"temperature": 0, "n": n, "max_tokens": extra.pop("max_tokens", 64 if endpoint == "chat" else 12)}
    body = {**fields, **extra}
    openai_fields = {k: body.pop(k) for k in list(body) if k in ("temperature", "n", "max_tokens", "stop")}
    if stream:
        openai_fields["stream"] = True
        if include_usage is not None:
            openai_fields["stream_options"] = {"include_usage": include_usage}
    if endpoint == "chat":
        return client.chat.completions.create(model=MODEL_NAME, messages=FRANCE, extra_body=body, **openai_fields)
    return client.completions.create(model=MODEL_NAME, prompt=PROMPT, extra_body=body, **openai_fields)


# n = 2 for every ending (each choice must carry its own finish_reason; usage counts the prompt once),
# n = 1 for the natural ending: the matrix stays ~40 requests, a CPU minute.
MATRIX = [(endpoint, n, case) for endpoint in ENDPOINTS for case in CASES for n in ((1, 2) if case == "natural" else (2,))]


@pytest.mark.parametrize("endpoint,n,case", MATRIX)
def test_non_streamed_fields(client, reference, endpoint, n, case):
    ref = reference[endpoint]
    extra, text, finish, completion = _case(ref, case)
    resp = _create(client, endpoint, False, n, dict(extra), None)
    assert resp.object == ("chat.completion" if endpoint == "chat" else "text_completion")
    assert [c.index for c in resp.choices] == list(range(n))
    texts = [c.message.content if endpoint == "chat" else c.text for c in resp.choices]
    assert [c.finish_reason for c in resp.choices] == [finish] * n, texts
    if text is not None:
        assert texts == [text] * n
    else:
        assert all(ref["text"].startswith(t) and len(t) < len(ref["text"]) for t in texts), texts
    assert resp.usage.prompt_tokens == ref["prompt_tokens"]  # each prompt counts once, whatever n
    if completion is not None:
        assert resp.usage.completion_tokens == n * completion
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


@pytest.mark.parametrize("include_usage", [None, True], ids=["usage-default", "usage-on"])
@pytest.mark.parametrize("endpoint,n,case", MATRIX)
def test_streamed_fields(client, reference, endpoint, n, case, include_usage):
    ref = reference[endpoint]
    extra, text, finish, completion = _case(ref, case)
    chunks = list(_create(client, endpoint, True, n, dict(extra), include_usage))
    kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    assert all(c.object == kind for c in chunks) and len({c.id for c in chunks}) == 1
    texts, finishes, finished_at = [""] * n, [None] * n, [None] * n
    for i, chunk in enumerate(chunks):
        for c in chunk.choices:
            assert finishes[c.index] is None, "a choice went on after its finish_reason"
            texts[c.index] += (c.delta.content or "") if endpoint == "chat" else c.text
            if c.finish_reason is not None:
                finishes[c.index], finished_at[c.index] = c.finish_reason, i
    assert finishes == [finish] * n, texts
    if text is not None:
        assert texts == [text] * n
    else:
        assert all(ref["text"].startswith(t) and len(t) < len(ref["text"]) for t in texts), texts
    with_usage = [i for i, c in enumerate(chunks) if c.usage is not None]
    if include_usage:
        # OpenAI's shape: one extra last chunk with no choices and the usage; none before it.
        assert with_usage == [len(chunks) - 1] and chunks[-1].choices == []
    else:
        # Ours: usage rides on the chunk that finishes the last choice, and on no other.
        assert with_usage == [max(finished_at)]
    usage = chunks[with_usage[0]].usage
    assert usage.prompt_tokens == ref["prompt_tokens"]
    if completion is not None:
        assert usage.completion_tokens == n * completion
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
