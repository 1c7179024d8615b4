"""The pipeline API: batches, chat messages, streaming, and the async engine the server uses."""
from __future__ import annotations

import asyncio

import pytest

from engine import EngineConfig, GenerationConfig, InvalidRequestError, Response, pipeline
from engine.async_engine import ThreadedEngine

from .helpers import assert_all_blocks_free


@pytest.fixture(scope="module")
def pipe(default_model_dir):
    return pipeline(default_model_dir, EngineConfig(device="cpu", cache_max_entry_count=256, cache_block_seq_len=16,
                                                    session_len=1024))


def test_batch_of_chat_prompts(pipe):
    gen = GenerationConfig(max_new_tokens=32)
    responses = pipe(["你好，请介绍一下自己", "What is the capital of France?"], gen_config=gen)
    assert isinstance(responses, list) and all(isinstance(r, Response) for r in responses)
    zh, fr = responses
    assert zh.text and "\ufffd" not in zh.text
    assert fr.text.strip() == "The capital of France is Paris."
    assert fr.finish_reason == "stop"
    assert fr.generate_token_len == len(fr.token_ids) and fr.input_token_len > 10
    assert pipe.tokenizer.decode(fr.token_ids, skip_special_tokens=True) == fr.text
    assert [r.index for r in responses] == [0, 1]


def test_single_prompt_returns_one_response(pipe):
    r = pipe("What is the capital of France?", gen_config=GenerationConfig(max_new_tokens=16))
    assert isinstance(r, Response) and "Paris" in r.text


def test_multi_turn_messages_with_system_prompt(pipe):
    messages = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": [{"type": "text", "text": "And of Germany?"}]},
    ]
    gen = GenerationConfig(max_new_tokens=24)
    r = pipe(messages, gen_config=gen)
    assert isinstance(r, Response) and r.text
    # The whole conversation (system prompt, both turns, text parts joined) went through the template.
    rendered = pipe.tokenizer.apply_chat_template(messages[:3] + [{"role": "user", "content": "And of Germany?"}],
                                                  tokenize=False, add_generation_prompt=True)
    assert "You are a terse assistant." in rendered and "Paris." in rendered
    assert r.input_token_len == len(pipe.tokenizer(rendered, add_special_tokens=False).input_ids)
    assert pipe(rendered, gen_config=gen, do_preprocess=False).text == r.text


def test_stream_infer_deltas_add_up(pipe):
    gen = GenerationConfig(max_new_tokens=40)
    prompts = ["你好，请介绍一下自己", "Name three colors."]
    full = pipe(prompts, gen_config=gen)
    pieces = ["", ""]
    finished = [None, None]
    for delta in pipe.stream_infer(prompts, gen_config=gen):
        pieces[delta.index] += delta.text
        if delta.finish_reason:
            finished[delta.index] = delta.finish_reason
    assert pieces == [r.text for r in full]
    assert finished == [r.finish_reason for r in full]
    assert_all_blocks_free(pipe.engine)


def test_abandoned_stream_frees_blocks(pipe):
    stream = pipe.stream_infer(["Tell me a long story about dragons."],
                               gen_config=GenerationConfig(max_new_tokens=100, ignore_eos=True))
    next(stream)
    next(stream)
    stream.close()
    assert_all_blocks_free(pipe.engine)


def test_bad_prompt_in_batch_adds_nothing(pipe):
    with pytest.raises(InvalidRequestError):
        pipe(["fine", [{"role": "wizard", "content": "x"}]])
    with pytest.raises(InvalidRequestError):
        pipe([])
    assert_all_blocks_free(pipe.engine)
    assert not pipe.engine.has_unfinished()


def test_async_engine_streams_and_aborts(pipe):
    aengine = ThreadedEngine(pipe.engine)
    prompt = pipe.engine.tokenize_prompt("The quick brown fox")

    async def main():
        gen = GenerationConfig(max_new_tokens=12, min_new_tokens=12)
        results = await asyncio.gather(*[collect(gen) for _ in range(4)])
        # Leaving a stream early aborts its request.
        stream = aengine.generate(prompt, GenerationConfig(max_new_tokens=200, ignore_eos=True))
        await stream.__anext__()
        await stream.aclose()
        with pytest.raises(InvalidRequestError):
            async for _ in aengine.generate("", gen):
                pass
        for _ in range(100):
            if not pipe.engine.has_unfinished():
                break
            await asyncio.sleep(0.02)
        await aengine.shutdown(timeout=5)
        return results

    async def collect(gen):
        tokens = []
        async for out in aengine.generate(prompt, gen):
            tokens.extend(out.token_ids)
            last = out
        assert last.finished and last.finish_reason == "length"
        return tokens

    results = asyncio.run(main())
    assert all(r == results[0] and len(r) == 12 for r in results)
    assert_all_blocks_free(pipe.engine)
