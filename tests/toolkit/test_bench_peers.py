"""The transformers `generate` peer of `opsctl bench offline` (toolkit/bench/peers.py), on a model that
records what it is asked: left-padded batches, each decoded to its longest output, and a short warm-up
(the full-length one cost the CPU gate 17 of its 86 s per bench run) except with a static cache, whose
compiled shapes depend on the output length.
"""
from __future__ import annotations

import pytest
import torch

from toolkit.bench.offline import OfflineWorkload
from toolkit.bench.peers import run_generate

PAD = 0


class RecordingModel:
    dtype = torch.float32

    def __init__(self):
        self.calls: list[dict] = []

    def generate(self, ids, attention_mask, max_new_tokens, min_new_tokens, do_sample, pad_token_id, **kwargs):
        self.calls.append({"ids": ids.clone(), "mask": attention_mask.clone(), "max_new_tokens": max_new_tokens,
                           "min_new_tokens": min_new_tokens, "do_sample": do_sample, "pad": pad_token_id, **kwargs})
        return torch.cat([ids, torch.full((ids.shape[0], max_new_tokens), 7)], dim=1)


WORK = OfflineWorkload("t", prompts=[[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]], output_lens=[4, 30, 12, 6])


def test_batches_are_left_padded_and_decode_to_their_longest_output_after_a_short_warm_up():
    model = RecordingModel()
    run = run_generate(model, WORK, "cpu", batch_size=2, model_name="m", pad_token_id=PAD)
    warm, first, second = model.calls
    assert warm["max_new_tokens"] == warm["min_new_tokens"] == 8 and warm["ids"].shape[0] == 2
    # batch [0, 1]: width 3, prompt [8] right-aligned; both decode to max(4, 30) greedily
    assert first["ids"].tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert first["mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert first["max_new_tokens"] == first["min_new_tokens"] == 30 and first["do_sample"] is False
    assert second["ids"].tolist() == [[PAD, PAD, 9, 10], [11, 12, 13, 14]] and second["max_new_tokens"] == 12
    # throughput counts the tokens the requests asked for, not the padded batch's extra ones
    s = run.summary
    assert s.output_throughput * s.duration_s == pytest.approx(sum(WORK.output_lens)) and sum(WORK.output_lens) == 52
    assert [r.output_tokens for r in run._records] == WORK.output_lens
    assert run.target == "transformers-generate" and run.load == {"batch_size": 2}


def test_a_static_cache_warms_up_on_the_full_output_length():
    model = RecordingModel()
    run_generate(model, WORK, "cpu", batch_size=4, model_name="m", pad_token_id=PAD, static_cache=True)
    warm, measured = model.calls
    assert warm["max_new_tokens"] == 30 and warm["cache_implementation"] == "static"  # the first two's longest
    assert measured["max_new_tokens"] == 30 and measured["ids"].shape == (4, 4)
