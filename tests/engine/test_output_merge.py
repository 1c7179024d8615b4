"""A stream consumer that falls behind gets the outputs that piled up as one, with nothing lost."""
from __future__ import annotations

import asyncio

import pytest
from transformers import AutoTokenizer

from engine.async_engine import AsyncEngine, EngineDeadError
from engine.engine import RequestOutput
from engine.generation import GenerationConfig
from engine.models.presets import TOKENIZER_DIR
from engine.request_factory import RequestFactory


class ScriptedEngine(AsyncEngine):
    """Delivers scripted steps for each submitted request at once, as a fast engine ahead of its reader."""

    def __init__(self, steps, lazy: bool, error: Exception | None = None):
        tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
        super().__init__(RequestFactory(tok, vocab_size=49152, session_len=512, eos_ids=frozenset({2})), None, None)
        self.steps, self.lazy, self.error = steps, lazy, error

    def _submit(self, spec):
        mirror = self.requests.build(spec)
        n = 0
        for i, ids in enumerate(self.steps):
            mirror.token_ids.extend(ids)
            n += len(ids)
            last = i == len(self.steps) - 1
            text = None if self.lazy else self.tokenizer.decode(ids, skip_special_tokens=True)
            self._deliver(spec.request_id, RequestOutput(
                spec.request_id, list(ids), text, last, "length" if last else None, len(spec.prompt_token_ids),
                n, request=mirror if self.lazy else None, text_end=mirror.num_prompt_tokens + n))
            if self.error is not None and i == 1:
                self._deliver(spec.request_id, self.error)
                return

    def _abort(self, request_id):
        pass


def _collect(engine, max_tokens=64):
    async def main():
        outs = []
        try:
            async for out in engine.generate("Hello there", GenerationConfig(max_new_tokens=max_tokens)):
                outs.append((out.token_ids, out.text, out.finished, out.finish_reason, out.num_output_tokens))
        except EngineDeadError as e:
            outs.append(e)
        return outs
    return asyncio.run(main())


STEPS = [[9906], [11], [1395], [314], [5248, 1345]]


@pytest.mark.parametrize("lazy", [True, False], ids=["detokenized-by-reader", "detokenized-by-engine"])
def test_piled_up_outputs_arrive_merged_and_complete(lazy):
    outs = _collect(ScriptedEngine(STEPS, lazy))
    # Everything was delivered before the consumer first read: one output with every token.
    assert len(outs) == 1
    ids, text, finished, reason, n = outs[0]
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    assert ids == [t for step in STEPS for t in step] and n == 6
    assert text == tok.decode(ids, skip_special_tokens=True) and finished and reason == "length"


def test_an_error_after_piled_up_outputs_comes_after_them():
    outs = _collect(ScriptedEngine(STEPS, True, EngineDeadError("gone")))
    assert len(outs) == 2
    ids, text, finished, _, _ = outs[0]
    assert ids == [9906, 11] and not finished and text
    assert isinstance(outs[1], EngineDeadError)
