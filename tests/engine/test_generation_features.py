"""Stopping and sampling features: stop words, stop ids, min/max tokens, penalties, logprobs, abort."""
from __future__ import annotations

import math

from engine import GenerationConfig

from .helpers import assert_all_blocks_free, greedy, run_alone


def _text(engine, ids):
    return engine.tokenizer.decode(ids, skip_special_tokens=True)


def test_multi_token_stop_word_ends_generation(smol_engine):
    prompt = smol_engine.tokenize_prompt("Count: 1, 2, 3, 4, 5, 6, 7,")
    free_run = run_alone(smol_engine, prompt, greedy(24))
    text = _text(smol_engine, free_run)
    stop = text[6:14]  # a piece of the text spanning several tokens
    assert len(smol_engine.tokenizer.encode(stop, add_special_tokens=False)) > 1
    [request] = smol_engine.generate([prompt], greedy(24).replace(min_new_tokens=0, stop_words=(stop,)))
    out = request.detokenizer.text
    assert request.finish_reason.value == "stop"
    assert out == text[:text.index(stop)]
    assert request.num_output_tokens < 24
    assert_all_blocks_free(smol_engine)


def test_stop_token_ids_and_ignore_eos(smol_engine):
    prompt = smol_engine.tokenize_prompt("Count: 1, 2, 3, 4, 5,")
    free_run = run_alone(smol_engine, prompt, greedy(12))
    stop_id = free_run[5]
    [request] = smol_engine.generate([prompt], GenerationConfig(max_new_tokens=12, stop_token_ids=(stop_id,)))
    assert request.finish_reason.value == "stop"
    assert request.output_token_ids == free_run[:free_run.index(stop_id) + 1]


def test_eos_stops_unless_ignored(smol_engine):
    from engine.prompt import chat_token_ids

    prompt = chat_token_ids(smol_engine.tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    [stopped] = smol_engine.generate([prompt], GenerationConfig(max_new_tokens=40))
    assert stopped.finish_reason.value == "stop" and stopped.output_token_ids[-1] in smol_engine.eos_token_ids
    [ignored] = smol_engine.generate([prompt], GenerationConfig(max_new_tokens=40, ignore_eos=True))
    assert ignored.finish_reason.value == "length" and ignored.num_output_tokens == 40
    [minimum] = smol_engine.generate([prompt], GenerationConfig(max_new_tokens=40, min_new_tokens=20))
    assert minimum.num_output_tokens >= 20
    assert not set(minimum.output_token_ids[:20]) & smol_engine.eos_token_ids


def test_session_len_caps_output(smol_engine):
    prompt = smol_engine.tokenize_prompt("word " * 2000)[: smol_engine.session_len - 5]
    [request] = smol_engine.generate([prompt], GenerationConfig(max_new_tokens=100, ignore_eos=True))
    assert request.finish_reason.value == "length"
    assert request.num_tokens == smol_engine.session_len


def test_repetition_and_frequency_penalties_reduce_repeats(smol_engine):
    prompt = smol_engine.tokenize_prompt("apple apple apple apple apple apple apple apple")
    plain = run_alone(smol_engine, prompt, greedy(24))
    rep = run_alone(smol_engine, prompt, greedy(24, repetition_penalty=1.5))
    freq = run_alone(smol_engine, prompt, greedy(24, frequency_penalty=1.5, presence_penalty=0.5))
    assert len(set(rep)) > len(set(plain))
    assert len(set(freq)) > len(set(plain))


def test_logprobs_with_top_alternatives(smol_engine):
    prompt = smol_engine.tokenize_prompt("The capital of France is")
    [request] = smol_engine.generate([prompt], greedy(5, logprobs=3))
    outs = []
    r = smol_engine.make_request(prompt, greedy(5, logprobs=3))
    smol_engine.add(r)
    while smol_engine.has_unfinished():
        outs.extend(o for o in smol_engine.step() if o.request_id == r.request_id)
    logprobs = [lp for o in outs for lp in o.logprobs]
    assert [lp.token_id for lp in logprobs] == request.output_token_ids
    for lp in logprobs:
        assert lp.logprob <= 0 and len(lp.top) == 3
        assert max(lp.top.values()) == lp.logprob  # greedy: the chosen token is the most likely
        assert sum(math.exp(v) for v in lp.top.values()) <= 1.0 + 1e-5


def test_abort_frees_blocks_at_once(smol_engine):
    prompt = smol_engine.tokenize_prompt("Tell me a long story")
    rid = smol_engine.add_request(prompt, GenerationConfig(max_new_tokens=200, ignore_eos=True))
    for _ in range(3):
        smol_engine.step()
    assert smol_engine.stats().num_free_blocks < smol_engine.stats().num_blocks
    assert smol_engine.abort(rid)
    assert_all_blocks_free(smol_engine)
    assert not smol_engine.abort(rid)


def test_sampling_params_change_output_but_stay_valid(smol_engine):
    prompt = smol_engine.tokenize_prompt("Once upon a time")
    gens = [GenerationConfig(max_new_tokens=16, do_sample=True, temperature=t, top_k=k, top_p=p, min_p=m,
                             random_seed=7)
            for t, k, p, m in [(1.0, 0, 1.0, 0.0), (0.7, 5, 1.0, 0.0), (1.2, 0, 0.5, 0.0), (1.0, 0, 1.0, 0.2)]]
    requests = smol_engine.generate([prompt] * len(gens), gens)
    assert all(r.num_output_tokens >= 1 for r in requests)
    # top_k=1 sampling is greedy whatever the temperature
    top1 = run_alone(smol_engine, prompt, GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.5,
                                                           top_k=1, min_new_tokens=12))
    assert top1 == run_alone(smol_engine, prompt, greedy(12))
