"""Many clients at once: 64 concurrent streams finish cleanly, disconnects free their blocks, /metrics moves."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from .conftest import MODEL_NAME, NUM_BLOCKS, wait_all_blocks_free

QUESTIONS = ["What is the capital of France?", "Name three colors.", "Count to five.", "What is 2 + 2?",
             "Say hello in Spanish.", "Why is the sky blue?", "Give me a fruit.", "写一句诗。"]


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics by name (labels folded in), parsed with prometheus-client's parser."""
    text = httpx.get(url + "/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name")
            samples[key] = s.value
    return samples


def test_64_concurrent_streaming_clients(server):
    engine = server.engine
    wait_all_blocks_free(engine)
    before = scrape(server.url)
    max_tokens = 16

    async def one(client: openai.AsyncOpenAI, i: int):
        stream = await client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            max_tokens=max_tokens, temperature=0.8, seed=i, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True})
        text, finish, usage = [], None, None
        async for chunk in stream:
            for c in chunk.choices:
                text.append(c.delta.content or "")
                finish = c.finish_reason or finish
            usage = chunk.usage or usage
        return "".join(text), finish, usage

    async def main():
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0,
                                      timeout=300) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    start = time.perf_counter()
    results = asyncio.run(main())
    elapsed = time.perf_counter() - start
    assert len(results) == 64
    for text, finish, usage in results:
        assert finish == "length" and usage.completion_tokens == max_tokens and text
    stats = wait_all_blocks_free(engine, timeout=5)
    assert stats.num_free_blocks == stats.num_blocks == NUM_BLOCKS

    after = scrape(server.url)
    assert after["opsctl:generation_tokens_total"] - before["opsctl:generation_tokens_total"] >= 64 * max_tokens
    assert after["opsctl:prompt_tokens_total"] > before["opsctl:prompt_tokens_total"]
    success = "opsctl:request_success_total|finished_reason=length"
    assert after[success] - before.get(success, 0) == 64
    assert after["opsctl:time_to_first_token_seconds_count"] - before["opsctl:time_to_first_token_seconds_count"] == 64
    assert (after["opsctl:inter_token_latency_seconds_count"]
            - before["opsctl:inter_token_latency_seconds_count"]) == 64 * (max_tokens - 1)
    assert after["opsctl:e2e_request_latency_seconds_count"] - before["opsctl:e2e_request_latency_seconds_count"] == 64
    assert after["opsctl:e2e_request_latency_seconds_sum"] > before["opsctl:e2e_request_latency_seconds_sum"]
    for gauge in ("opsctl:num_requests_running", "opsctl:num_requests_waiting", "opsctl:kv_cache_usage_perc",
                  "opsctl:prefix_cache_hit_rate", "opsctl:num_preemptions_total"):
        assert gauge in after
    assert after["opsctl:kv_cache_free_blocks"] == after["opsctl:kv_cache_num_blocks"] == NUM_BLOCKS
    print(f"64 streams x {max_tokens} tokens in {elapsed:.1f} s")


def test_20_clients_disconnecting_mid_stream_free_their_blocks(server):
    engine = server.engine
    wait_all_blocks_free(engine)
    before = engine.stats()
    max_tokens = 400
    seen_busy = []

    async def one(client: httpx.AsyncClient, i: int):
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            events = 0
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    events += 1
                    if events == 3 + i % 4:  # role chunk + a few tokens, then hang up
                        seen_busy.append(engine.stats().num_free_blocks < engine.stats().num_blocks)
                        return events

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(20)))

    asyncio.run(main())
    assert any(seen_busy)  # blocks were held while the streams were live
    gone = time.perf_counter()
    stats = wait_all_blocks_free(engine, timeout=10)
    freed_after = time.perf_counter() - gone
    assert stats.num_free_blocks == stats.num_blocks
    # Aborted, not run to the end: far fewer than 20 x 400 tokens were generated.
    assert stats.generation_tokens_total - before.generation_tokens_total < 20 * max_tokens // 4
    assert freed_after < 5, f"blocks freed {freed_after:.2f} s after the last client left"
    # The server still serves.
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200


def test_disconnect_of_non_streaming_request_aborts_it(server):
    engine = server.engine
    wait_all_blocks_free(engine)
    body = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 900, "ignore_eos": True}
    with httpx.Client(base_url=server.url, timeout=1.0) as c:
        try:
            c.post("/v1/completions", json=body)
        except httpx.ReadTimeout:
            pass
    before = engine.stats().generation_tokens_total
    wait_all_blocks_free(engine, timeout=10)
    assert engine.stats().generation_tokens_total - before < 400
