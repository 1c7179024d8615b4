"""Sampling checked against definitions: transformers' logits processors, OpenAI's penalty formula,
the softmax the sampled tokens must follow, and transformers' generate on the same model.

Definitions pinned (engine/runner/sampler.py, engine/runner/sampling_inputs.py):
- order: penalties, then temperature, then the filters (HF and vLLM both scale by the temperature
  before filtering, so top-p and min-p see the tempered distribution);
- top-k, top-p, min-p: HF's TopK/TopP/MinPLogitsWarper (tokens tied with the k-th stay), chained
  in vLLM v1's order: min-p, then top-k, then top-p. HF runs min-p last; the two orders differ only
  when min-p and top-p are both set (test_min_p_runs_before_top_p_as_in_vllm shows a case);
- repetition penalty: HF's RepetitionPenaltyLogitsProcessor (CTRL) over prompt AND output tokens;
- presence/frequency penalties: OpenAI's logit - count * frequency - (count > 0) * presence, over
  output tokens only (HF has no such processor; vLLM follows OpenAI);
- a sampled token follows softmax of the processed logits; a seeded row's draw is a function of
  (seed, output index) only (the exponential race on seeded_uniform noise, see the sampler).
"""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from transformers.generation.logits_process import (LogitsProcessor, LogitsProcessorList, MinPLogitsWarper,
                                                    RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from engine import GenerationConfig
from engine.request import Request
from engine.runner.sampler import Sampler, SamplingMetadata, _top_k_top_p_min_p, apply_penalties, seeded_uniform
from engine.runner.sampling_inputs import build_sampling_metadata
from engine.step_plan import sampling_batch

from .helpers import greedy, run_alone

INF = float("inf")
OUR_ORDER = ("temperature", "min_p", "top_k", "top_p")  # vLLM v1
HF_ORDER = ("temperature", "top_k", "top_p", "min_p")  # transformers' generate


# ---------------------------------------------------------------------------------------------
# References, written from the definitions (transformers' processors, OpenAI's formula)


def hf_warp(row: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, order=OUR_ORDER) -> torch.Tensor:
    """One row of logits through transformers' warpers, each added when generate would add it."""
    warpers = {
        "temperature": TemperatureLogitsWarper(temperature) if temperature not in (0.0, 1.0) else None,
        "top_k": TopKLogitsWarper(top_k) if top_k > 0 else None,
        "top_p": TopPLogitsWarper(top_p) if top_p < 1.0 else None,
        "min_p": MinPLogitsWarper(min_p) if min_p > 0.0 else None,
    }
    scores = row[None].clone()
    no_ids = torch.zeros(1, 0, dtype=torch.long)
    for name in order:
        if warpers[name] is not None:
            scores = warpers[name](no_ids, scores)
    return scores[0]


def reference_penalties(row: torch.Tensor, prompt: list[int], output: list[int], repetition=1.0,
                        frequency=0.0, presence=0.0) -> torch.Tensor:
    scores = row[None].clone()
    if repetition != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(repetition)(torch.tensor([prompt + output]), scores)
    scores = scores[0]
    for token, count in Counter(output).items():  # OpenAI: output tokens only
        scores[token] -= count * frequency + presence
    return scores


def exponential_race(probs: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The draw the sampler documents: argmax(p / E), E = -log(U), U = seeded_uniform(seed, step)."""
    noise = seeded_uniform(seeds, steps, probs.shape[-1])
    return (probs / -torch.log(noise).to(probs.dtype)).argmax(dim=-1)


def assert_same_masked(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Same tokens masked to -inf, same values elsewhere."""
    kept_ours, kept_theirs = ours > -INF, theirs > -INF
    diff = (kept_ours != kept_theirs).nonzero().tolist()
    assert not diff, f"kept sets differ at (row, token) {diff[:10]} ({len(diff)} in all)"
    torch.testing.assert_close(ours[kept_ours], theirs[kept_theirs], rtol=1e-6, atol=1e-6)


def random_logits(rows: int, vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale


def meta_for(temperature=None, top_k=None, top_p=None, min_p=None, vocab=None) -> SamplingMetadata:
    """SamplingMetadata as sampling_inputs builds it: top_k = vocab where off, a tensor only if asked."""
    def t(values, dtype):
        return None if values is None else torch.tensor(values, dtype=dtype)
    if top_k is not None:
        top_k = [k if 0 < k < vocab else vocab for k in top_k]
    return SamplingMetadata(all_greedy=False, temperature=t(temperature, torch.float32), top_k=t(top_k, torch.int64),
                            top_p=t(top_p, torch.float32), min_p=t(min_p, torch.float32))


# ---------------------------------------------------------------------------------------------
# Each filter against transformers, several rows with different parameters in one batch


def test_top_k_matches_hf():
    vocab = 257  # odd on purpose
    ks = [1, 2, 7, 50, 256, 257, 0, 13]  # 257 and 0: off
    logits = random_logits(len(ks), vocab, seed=1)
    ours = _top_k_top_p_min_p(logits, meta_for(top_k=ks, vocab=vocab))
    theirs = torch.stack([hf_warp(logits[i], top_k=k) for i, k in enumerate(ks)])
    assert_same_masked(ours, theirs)
    assert (ours > -INF).sum(-1).tolist() == [k if 0 < k < vocab else vocab for k in ks]


def test_top_k_keeps_every_token_tied_with_the_kth():
    # HF (scores < k-th value are removed) and vLLM keep the whole tie; a cut by rank keeps an
    # arbitrary part of it, chosen by the sort.
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.5, 2.0, -1.0],
                           [1.0, 3.0, 2.0, 2.0, 0.5, 2.0, -1.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    # Row 0: k = 2 ends inside the three-way tie at 2.0, so 4 tokens stay; row 1: k = 4 ends with it.
    ours = _top_k_top_p_min_p(logits, meta_for(top_k=[2, 4, 3], vocab=7))
    theirs = torch.stack([hf_warp(logits[0], top_k=2), hf_warp(logits[1], top_k=4), hf_warp(logits[2], top_k=3)])
    assert_same_masked(ours, theirs)
    assert (ours[0] > -INF).tolist() == [False, True, True, True, False, True, False]
    assert (ours[1] > -INF).tolist() == [False, True, True, True, False, True, False]
    assert bool((ours[2] > -INF).all())


def test_top_p_matches_hf_and_leaves_rows_with_top_p_1_alone():
    # A large vocabulary: rows with top_p = 1 (off) next to rows that use it must keep every token
    # (a float32 cumsum from the head reaches 1.0 early and used to cut their tail).
    vocab = 32000
    ps = [1.0, 0.5, 0.9, 0.95, 0.1, 1.0, 0.999]
    logits = random_logits(len(ps), vocab, seed=2)
    ours = _top_k_top_p_min_p(logits, meta_for(top_p=ps))
    theirs = torch.stack([hf_warp(logits[i], top_p=p) for i, p in enumerate(ps)])
    assert_same_masked(ours, theirs)
    assert bool((ours[0] > -INF).all()) and bool((ours[5] > -INF).all())


def test_top_p_keeps_the_smallest_prefix_reaching_top_p():
    # probs 0.5, 0.3, 0.15, 0.05 (token order shuffled): the nucleus is the smallest set of most
    # likely tokens whose mass reaches top_p.
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    cases = {0.4: 1, 0.5001: 2, 0.7: 2, 0.79: 2, 0.81: 3, 0.9: 3, 0.96: 4}
    logits = probs.log().expand(len(cases), 4).contiguous()
    ours = _top_k_top_p_min_p(logits, meta_for(top_p=list(cases)))
    assert (ours > -INF).sum(-1).tolist() == list(cases.values())
    assert_same_masked(ours, torch.stack([hf_warp(logits[i], top_p=p) for i, p in enumerate(cases)]))
    assert (ours[2] > -INF).tolist() == [False, True, False, True]


def test_top_p_with_ties_keeps_as_many_as_hf():
    # probs of [2, 1, 1, 1, 0]: 0.447, 0.164 x3, 0.060. top_p 0.7 ends inside the tie: the nucleus
    # holds the top token and two of the three tied ones; which two is not defined (HF's sort decides
    # too), how many and their values are.
    logits = torch.tensor([[1.0, 2.0, 1.0, 0.0, 1.0]] * 3)
    ps = [0.7, 0.5, 0.95]
    ours = _top_k_top_p_min_p(logits, meta_for(top_p=ps))
    for i, p in enumerate(ps):
        theirs = hf_warp(logits[i], top_p=p)
        assert sorted(ours[i][ours[i] > -INF].tolist()) == sorted(theirs[theirs > -INF].tolist()), p
    assert (ours > -INF).sum(-1).tolist() == [3, 2, 5]


def test_min_p_matches_hf_and_is_relative_to_the_top_probability():
    vocab = 1001
    mps = [0.0, 0.05, 0.1, 0.5, 0.9, 1.0, 0.01]
    logits = random_logits(len(mps), vocab, seed=3)
    ours = _top_k_top_p_min_p(logits, meta_for(min_p=mps))
    assert_same_masked(ours, torch.stack([hf_warp(logits[i], min_p=m) for i, m in enumerate(mps)]))
    # Hand-made: probs 0.2, 0.12, 0.05, 0.02, 0.011, 0.009 and 69 tokens sharing the rest. min_p 0.05
    # keeps p >= 0.05 * 0.2 = 0.01: five tokens; an absolute floor of 0.05 would keep three.
    head = [0.2, 0.12, 0.05, 0.02, 0.011, 0.009]
    probs = torch.tensor(head + [(1 - sum(head)) / 69] * 69)
    assert probs[6] < 0.01
    out = _top_k_top_p_min_p(probs.log()[None], meta_for(min_p=[0.05]))[0]
    assert (out > -INF).nonzero().flatten().tolist() == [0, 1, 2, 3, 4]


def test_filters_together_match_hf_warpers_in_our_order():
    vocab = 513
    rows = [  # (temperature, top_k, top_p, min_p)
        (1.0, 40, 0.9, 0.0), (0.7, 0, 0.8, 0.05), (1.3, 10, 1.0, 0.1), (2.0, 100, 0.5, 0.02),
        (0.5, 5, 0.95, 0.3), (1.0, 0, 1.0, 0.0), (3.0, 200, 0.7, 0.01), (0.9, 1, 0.5, 0.5),
    ]
    logits = random_logits(len(rows), vocab, seed=4)
    temps = torch.tensor([r[0] for r in rows])
    ours = _top_k_top_p_min_p(logits / temps[:, None], meta_for(top_k=[r[1] for r in rows], top_p=[r[2] for r in rows],
                                                                min_p=[r[3] for r in rows], vocab=vocab))
    theirs = torch.stack([hf_warp(logits[i], t, k, p, m) for i, (t, k, p, m) in enumerate(rows)])
    assert_same_masked(ours, theirs)


def test_min_p_runs_before_top_p_as_in_vllm():
    # probs 0.5, 0.3, 0.1, 0.1 with min_p 0.3 (floor 0.15) and top_p 0.6. vLLM v1 (ours): min-p
    # leaves {0.5, 0.3}, renormalised 0.625 / 0.375, and top-p 0.6 keeps the first alone. HF's order
    # (top-p keeps {0.5, 0.3}, min-p keeps both) gives two tokens. Pinned so a reordering is a decision.
    logits = torch.tensor([0.5, 0.3, 0.1, 0.1]).log()[None]
    ours = _top_k_top_p_min_p(logits, meta_for(top_p=[0.6], min_p=[0.3]))[0]
    assert (ours > -INF).tolist() == [True, False, False, False]
    assert_same_masked(ours, hf_warp(logits[0], top_p=0.6, min_p=0.3, order=OUR_ORDER))
    assert (hf_warp(logits[0], top_p=0.6, min_p=0.3, order=HF_ORDER) > -INF).tolist() == [True, True, False, False]


# ---------------------------------------------------------------------------------------------
# Penalties


def test_repetition_penalty_matches_hf_over_prompt_and_output():
    vocab = 101
    logits = random_logits(4, vocab, seed=5)
    logits[:, 7] = 0.0  # a zero logit stays zero either way
    histories = [([3, 7, 9, 3], [11, 12, 11]), ([50], []), ([], [1, 2, 3, 100]), ([4, 5, 6], [6, 4, 99])]
    penalties = [1.5, 1.2, 0.7, 1.0]
    seen = torch.zeros(4, vocab, dtype=torch.bool)
    for i, (prompt, output) in enumerate(histories):
        seen[i, prompt + output] = True
    meta = SamplingMetadata(all_greedy=True, seen_mask=seen, repetition_penalty=torch.tensor(penalties))
    ours = apply_penalties(logits, meta)
    theirs = torch.stack([reference_penalties(logits[i], p, o, repetition=r)
                          for i, ((p, o), r) in enumerate(zip(histories, penalties))])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.equal(ours[0], logits[0])


def test_frequency_and_presence_penalties_follow_openai():
    vocab = 64
    logits = random_logits(3, vocab, seed=6)
    outputs = [[5, 5, 5, 9, 1], [], [63, 0, 63]]
    frequency, presence = [0.5, 1.0, -0.3], [0.25, 2.0, -1.5]
    counts = torch.zeros(3, vocab, dtype=torch.int32)
    for i, out in enumerate(outputs):
        for t in out:
            counts[i, t] += 1
    meta = SamplingMetadata(all_greedy=True, output_counts=counts, frequency_penalty=torch.tensor(frequency),
                            presence_penalty=torch.tensor(presence))
    ours = apply_penalties(logits, meta)
    # By hand for row 0: token 5 (3 times) loses 3 * 0.5 + 0.25 = 1.75; tokens 9 and 1 lose 0.75.
    assert float(logits[0, 5] - ours[0, 5]) == pytest.approx(1.75)
    assert float(logits[0, 9] - ours[0, 9]) == pytest.approx(0.75)
    theirs = torch.stack([reference_penalties(logits[i], [], out, frequency=f, presence=p)
                          for i, (out, f, p) in enumerate(zip(outputs, frequency, presence))])
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# From requests: build_sampling_metadata, then the whole Sampler, against the references


def _request(i: int, prompt: list[int], output: list[int], gen: GenerationConfig, seed: int) -> Request:
    """A running request about to sample its next token: outputs known, the next one a placeholder."""
    r = Request(f"r{i}", prompt, gen, eos_token_ids=frozenset(), max_tokens=10_000, seed=seed)
    r.token_ids.extend(output)
    r.append_placeholder()
    return r


def test_build_sampling_metadata_follows_generation_config():
    vocab = 50
    gens = [GenerationConfig(do_sample=True, temperature=0.7, top_k=-1, top_p=0.9, repetition_penalty=1.3),
            GenerationConfig(do_sample=True, temperature=1.2, top_k=0, min_p=0.1, frequency_penalty=0.5),
            GenerationConfig(do_sample=True, temperature=0.9, top_k=7, presence_penalty=-0.4),
            GenerationConfig(do_sample=False, temperature=0.9, top_k=7),  # greedy: do_sample off
            GenerationConfig(do_sample=True, temperature=0.0, top_k=80)]  # greedy: temperature 0; top_k > vocab
    histories = [([1, 2, 3], [4, 4]), ([10, 11], [12, 10, 12, 12]), ([5], []), ([6, 6], [7]), ([8], [9, 9, 9])]
    reqs = [_request(i, p, o, g, seed=100 + i) for i, ((p, o), g) in enumerate(zip(histories, gens))]
    meta = build_sampling_metadata(sampling_batch(reqs), vocab, torch.device("cpu"))
    assert not meta.all_greedy
    assert meta.temperature.tolist() == pytest.approx([0.7, 1.2, 0.9, 0.0, 0.0])
    assert meta.top_k.tolist() == [vocab, vocab, 7, 7, vocab]
    assert meta.top_p.tolist() == pytest.approx([0.9, 1.0, 1.0, 1.0, 1.0])
    assert meta.min_p.tolist() == pytest.approx([0.0, 0.1, 0.0, 0.0, 0.0])
    assert meta.seeds.tolist() == [100, 101, 102, 103, 104]
    assert meta.steps.tolist() == [len(o) for _, o in histories]  # index of the token being sampled
    assert meta.repetition_penalty.tolist() == pytest.approx([1.3, 1.0, 1.0, 1.0, 1.0])
    assert meta.frequency_penalty.tolist() == pytest.approx([0.0, 0.5, 0.0, 0.0, 0.0])
    assert meta.presence_penalty.tolist() == pytest.approx([0.0, 0.0, -0.4, 0.0, 0.0])
    for i, (prompt, output) in enumerate(histories):
        # repetition penalty: every token of prompt and output; presence/frequency: output counts only
        assert set(meta.seen_mask[i].nonzero().flatten().tolist()) == set(prompt + output), i
        assert {t: c for t, c in enumerate(meta.output_counts[i].tolist()) if c} == dict(Counter(output)), i


SAMPLER_CONFIGS = [  # the whole chain, every knob, greedy and sampled rows mixed
    dict(do_sample=False, repetition_penalty=1.3),
    dict(do_sample=True, temperature=0.7, top_k=20, repetition_penalty=1.2),
    dict(do_sample=True, temperature=1.5, top_k=0, top_p=0.8, frequency_penalty=0.5, presence_penalty=0.3),
    dict(do_sample=True, temperature=1.0, top_k=-1, min_p=0.1, repetition_penalty=0.8),
    dict(do_sample=True, temperature=2.0, top_k=0, top_p=0.5, min_p=0.05, presence_penalty=-0.5),
    dict(do_sample=True, temperature=0.5, top_k=0),
    dict(do_sample=True, temperature=1.0, top_k=30, top_p=0.9, repetition_penalty=1.5, frequency_penalty=1.0),
    dict(do_sample=False, frequency_penalty=1.2, presence_penalty=0.4),
]


def test_sampler_draws_from_the_hf_processed_distribution():
    """Every row's token is the documented exponential-race draw from softmax of transformers'
    chain: repetition penalty, OpenAI penalties, temperature, min-p, top-k, top-p (argmax for
    greedy rows). The race is invariant to scaling p, so this compares kept sets and relative
    probabilities, and so the order of the steps."""
    vocab, copies = 211, 48
    g = torch.Generator().manual_seed(7)
    reqs, histories = [], []
    for c in range(copies):
        for j, cfg in enumerate(SAMPLER_CONFIGS):
            prompt = torch.randint(0, vocab, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g).tolist()
            # outputs drawn from a few tokens so they repeat (frequency counts above 1)
            pool = torch.randint(0, vocab, (6,), generator=g)
            output = pool[torch.randint(0, 6, (int(torch.randint(0, 12, (1,), generator=g)),), generator=g)].tolist()
            i = len(reqs)
            reqs.append(_request(i, prompt, output, GenerationConfig(**cfg), seed=1000 + 17 * i))
            histories.append((prompt, output))
    logits = random_logits(len(reqs), vocab, seed=8, scale=2.5)
    meta = build_sampling_metadata(sampling_batch(reqs), vocab, torch.device("cpu"))
    tokens = Sampler()(logits.clone(), meta).token_ids

    expected = []
    for i, (r, (prompt, output)) in enumerate(zip(reqs, histories)):
        gen = r.gen
        row = reference_penalties(logits[i], prompt, output, gen.repetition_penalty, gen.frequency_penalty,
                                  gen.presence_penalty)
        if gen.greedy:
            expected.append(int(row.argmax()))
            continue
        row = hf_warp(row, gen.temperature, gen.top_k, gen.top_p, gen.min_p)
        draw = exponential_race(row.softmax(-1)[None], torch.tensor([r.seed]), torch.tensor([len(output)]))
        expected.append(int(draw))
    mismatched = [(i, reqs[i].gen) for i in range(len(reqs)) if tokens[i] != expected[i]]
    assert not mismatched, f"{len(mismatched)} of {len(reqs)} rows differ, first: {mismatched[:3]}"


def test_seeded_draw_depends_only_on_seed_and_step():
    vocab = 97
    base = random_logits(1, vocab, seed=9)[0]
    def draw(rows_logits, seeds, steps):
        n = len(seeds)
        meta = SamplingMetadata(all_greedy=False, temperature=torch.ones(n), seeds=torch.tensor(seeds),
                                steps=torch.tensor(steps))
        return Sampler()(rows_logits, meta).token_ids.tolist()
    alone = draw(base[None], [42], [3])[0]
    crowd = draw(torch.stack([random_logits(1, vocab, seed=10)[0], base, base * 0.5]), [7, 42, 42], [3, 3, 3])
    assert crowd[1] == alone  # same seed and step, other rows around: same token
    # Over many seeds, the draws are not all the same (the seed matters) and over steps neither.
    assert len(set(draw(base.expand(64, vocab), list(range(64)), [3] * 64))) > 5
    assert len(set(draw(base.expand(64, vocab), [42] * 64, list(range(64))))) > 5


# ---------------------------------------------------------------------------------------------
# The sampled distribution: 20,000 draws (one row per seed, one Sampler call) against the softmax

DRAWS = 20_000
DELTA = 1e-6  # chance that a correct sampler fails the bound below


def _zipf_logits(vocab: int) -> torch.Tensor:
    """p_i proportional to (i + 1)^-1.1 (a word-frequency-like tail), token ids shuffled."""
    logits = -1.1 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))
    return logits[torch.randperm(vocab, generator=torch.Generator().manual_seed(11))]


def _l1_bound(p: torch.Tensor, n: int) -> float:
    """With probability >= 1 - DELTA the empirical distribution of n draws from p is within this L1
    distance: E|p^ - p|_1 <= sum_i sqrt(p_i (1 - p_i) / n) (Jensen), and one draw moves |p^ - p|_1
    by at most 2 / n, so McDiarmid adds sqrt(2 ln(1 / DELTA) / n)."""
    p = p.double()
    return float((p * (1 - p) / n).sqrt().sum()) + math.sqrt(2 * math.log(1 / DELTA) / n)


DISTRIBUTION_CASES = {
    # name: (temperature, top_k, top_p, min_p, the bug it must tell apart: (temperature, filters) -> probs)
    "temperature 0.7": (0.7, 0, 1.0, 0.0, lambda lg: lg.softmax(-1)),  # temperature ignored
    # Temperature after the filters: top-p 0.5 would cut the sharp (T=1) distribution to a few
    # tokens, then flatten them; before, it cuts the flattened one, keeping many more.
    "temperature 2, top_p 0.5": (2.0, 0, 0.5, 0.0, lambda lg: (hf_warp(lg, top_p=0.5) / 2.0).softmax(-1)),
    # min_p as an absolute floor (p >= 0.05) keeps 4 tokens; relative (p >= 0.05 * p_max) keeps 15.
    "min_p 0.05": (1.0, 0, 1.0, 0.05,
                   lambda lg: lg.masked_fill(lg.softmax(-1) < 0.05, -INF).softmax(-1)),
    # top-k ignored. (Temperature does not move the top-k set; one token too many is caught by the
    # exact kept-set check, one too few by the unit tests above.)
    "temperature 0.8, top_k 10": (0.8, 10, 1.0, 0.0, lambda lg: (lg / 0.8).softmax(-1)),
}


@pytest.mark.parametrize("case", list(DISTRIBUTION_CASES))
def test_sampled_tokens_follow_softmax_of_the_processed_logits(case):
    temperature, top_k, top_p, min_p, bug = DISTRIBUTION_CASES[case]
    vocab = 101
    logits = _zipf_logits(vocab)
    expected = hf_warp(logits, temperature, top_k, top_p, min_p).softmax(-1)
    bound = _l1_bound(expected, DRAWS)
    # The test can tell the named bug apart: its distribution is far outside the bound.
    assert float((bug(logits) - expected).abs().sum()) > 2 * bound

    meta = meta_for(temperature=[temperature] * DRAWS, top_k=[top_k] * DRAWS if top_k else None,
                    top_p=[top_p] * DRAWS if top_p < 1 else None, min_p=[min_p] * DRAWS if min_p else None,
                    vocab=vocab)
    meta.seeds = torch.arange(DRAWS, dtype=torch.int64) * 7919 + 12345
    meta.steps = torch.arange(DRAWS, dtype=torch.int64) % 5
    tokens = Sampler()(logits.expand(DRAWS, vocab).contiguous(), meta).token_ids
    empirical = torch.bincount(tokens, minlength=vocab).double() / DRAWS
    # Never a token outside the kept set (exact), and the frequencies within the bound.
    outside = ((empirical > 0) & (expected == 0)).nonzero().flatten().tolist()
    assert not outside, f"sampled tokens outside the kept set: {outside}"
    l1 = float((empirical - expected.double()).abs().sum())
    assert l1 <= bound, f"L1 distance {l1:.4f} > bound {bound:.4f} over {DRAWS} draws"


# ---------------------------------------------------------------------------------------------
# End to end on the embedded model against transformers' generate (fp32, CPU)

COUNT_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
NEW_TOKENS = 16


def _hf_generate(model, prompt_ids, **kw) -> list[int]:
    """transformers greedy decoding, EOS suppressed for NEW_TOKENS (as helpers.hf_greedy)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=model.config.eos_token_id, **kw)
    return out[0, len(prompt_ids):].tolist()


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence/frequency penalties for transformers' generate (it has none): output tokens only."""

    def __init__(self, prompt_len: int, frequency: float, presence: float):
        self.prompt_len, self.frequency, self.presence = prompt_len, frequency, presence

    def __call__(self, input_ids, scores):
        for row in range(scores.shape[0]):
            for token, count in Counter(input_ids[row, self.prompt_len:].tolist()).items():
                scores[row, token] -= count * self.frequency + self.presence
        return scores


@pytest.fixture(scope="module")
def count_prompt(smol_engine):
    """The prompt's ids and its plain greedy continuation (" 13, 14, 15, 16,"), shared by the tests."""
    ids = smol_engine.tokenize_prompt(COUNT_PROMPT)
    return ids, run_alone(smol_engine, ids, greedy(NEW_TOKENS))


def test_repetition_penalty_greedy_matches_transformers_generate(smol_engine, hf_smol, count_prompt):
    model, _ = hf_smol
    ids, plain = count_prompt
    ours = run_alone(smol_engine, ids, greedy(NEW_TOKENS, repetition_penalty=1.5))
    assert ours != plain  # the penalty matters here ("13, 14, ..." repeats the prompt's tokens)
    assert ours == _hf_generate(model, ids, repetition_penalty=1.5)


def test_frequency_and_presence_penalties_greedy_match_reference_generate(smol_engine, hf_smol, count_prompt):
    model, _ = hf_smol
    ids, plain = count_prompt
    ours = run_alone(smol_engine, ids, greedy(NEW_TOKENS, frequency_penalty=1.5, presence_penalty=1.0))
    assert ours != plain  # " 13, 14, 15)\nprint(f" instead of " 13, 14, 15, 16,": the repeated ", " pay
    reference = _hf_generate(model, ids, logits_processor=LogitsProcessorList([OpenAIPenalties(len(ids), 1.5, 1.0)]))
    assert ours == reference
