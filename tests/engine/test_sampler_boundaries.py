"""top-p at its exact boundary, against transformers' TopPLogitsWarper.

HF drops a token when the mass from it to the tail is at most 1 - top_p (`<=`): a nucleus that
reaches top_p exactly stops there. Every row below puts 1 - top_p exactly on a tail sum (the
probabilities are sums of powers of two, exact in float32), so a `<` in the sampler keeps one
token too many and these rows tell the two apart; off-boundary rows elsewhere cannot.
"""
from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from engine.runner.sampler import SamplingMetadata, _top_k_top_p_min_p

INF = float("inf")

# (name, probabilities (token order shuffled where distinct), top_p, tokens HF keeps)
ROWS = [
    ("two equal, top_p 0.5", [0.5, 0.5], 0.5, 1),
    ("four equal, top_p 0.75", [0.25] * 4, 0.75, 3),
    ("four equal, top_p 0.5", [0.25] * 4, 0.5, 2),
    ("four equal, top_p 0.25", [0.25] * 4, 0.25, 1),
    ("eight equal, top_p 0.875", [0.125] * 8, 0.875, 7),
    ("distinct, top_p 0.5", [0.125, 0.5, 0.375], 0.5, 1),
    ("distinct, top_p 0.875", [0.125, 0.5, 0.375], 0.875, 2),
    ("tied tail, top_p 0.75", [0.125, 0.25, 0.125, 0.5], 0.75, 2),
]


def _hf(row: torch.Tensor, top_p: float) -> torch.Tensor:
    return TopPLogitsWarper(top_p)(torch.zeros(1, 0, dtype=torch.long), row[None].clone())[0]


def _ours(logits: torch.Tensor, top_ps: list[float]) -> torch.Tensor:
    meta = SamplingMetadata(all_greedy=False, top_p=torch.tensor(top_ps, dtype=torch.float32))
    return _top_k_top_p_min_p(logits, meta)


@pytest.mark.parametrize("probs,top_p,kept", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_top_p_exact_boundary_keeps_what_hf_keeps(probs, top_p, kept):
    logits = torch.tensor([probs], dtype=torch.float32).log()
    # The row really is on the boundary: some tail sum equals 1 - top_p exactly in float32.
    tail = logits.softmax(-1).sort(descending=True).values.flip(-1).cumsum(-1)
    assert bool((tail == torch.tensor(1 - top_p, dtype=torch.float32)).any())
    ours = _ours(logits, [top_p])[0]
    theirs = _hf(logits[0], top_p)
    assert int((theirs > -INF).sum()) == kept  # what HF does, pinned
    assert int((ours > -INF).sum()) == kept
    # Which of a tie stays is the sort's choice (HF's too); the kept values are defined.
    assert sorted(ours[ours > -INF].tolist()) == sorted(theirs[theirs > -INF].tolist())
    if len(set(probs)) == len(probs):
        assert (ours > -INF).tolist() == (theirs > -INF).tolist()


def test_top_p_exact_boundaries_in_one_batch():
    # The same rows side by side (the sampler filters a whole batch at once), padded with -inf tokens.
    width = max(len(r[1]) for r in ROWS)
    logits = torch.full((len(ROWS), width), -INF)
    for i, (_, probs, _, _) in enumerate(ROWS):
        logits[i, :len(probs)] = torch.tensor(probs).log()
    ours = _ours(logits, [r[2] for r in ROWS])
    assert (ours > -INF).sum(-1).tolist() == [r[3] for r in ROWS]
    for i, (_, _, top_p, _) in enumerate(ROWS):
        theirs = _hf(logits[i], top_p)
        assert int((theirs > -INF).sum()) == ROWS[i][3]
