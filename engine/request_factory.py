"""RequestFactory: prompt + GenerationConfig -> a validated Request, without the model.

Everything a request can get wrong (token ids out of range, an empty or too long prompt, bad words
that are not one token) is checked here, before the engine sees it. The factory needs only the
tokenizer and the model's config, so the API server's process builds requests with it while the
engine runs in another process: it sends the picklable RequestSpec, and both sides build their own
Request from it (the server's copy detokenizes the streamed tokens, the engine's schedules them).
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from .detokenizer import IncrementalDetokenizer
from .errors import InvalidRequestError
from .generation import GenerationConfig
from .models.source import ModelSource
from .request import Request


def session_len_for(source: ModelSource, session_len: int | None) -> int:
    """The session length the engine serves: the configured one, else the model's context.

    A session_len beyond the model's trained context stretches its rope table (the config is
    updated so the runner builds one that long).
    """
    hf = source.hf_config
    max_pos = getattr(hf, "max_position_embeddings", 8192)
    length = session_len or max_pos
    if length > max_pos:
        hf.max_position_embeddings = length
    return length


def eos_token_ids(source: ModelSource, tokenizer) -> frozenset[int]:
    """EOS ids from the model config and the tokenizer (either may list several)."""
    eos = set()
    for value in (getattr(source.hf_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, (list, tuple)):
            eos.update(value)
    return frozenset(eos)


@dataclass(frozen=True)
class RequestSpec:
    """A validated request as it travels to the engine (plain data, picklable)."""

    request_id: str
    prompt_token_ids: list[int]
    gen: GenerationConfig
    max_tokens: int
    seed: int
    bad_token_ids: tuple[int, ...]


class RequestFactory:
    def __init__(self, tokenizer, *, vocab_size: int, session_len: int, eos_ids: frozenset[int]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.session_len = session_len
        self.eos_token_ids = eos_ids
        self._ids = itertools.count()
        self._rng = random.Random()

    @classmethod
    def for_model(cls, source: ModelSource, tokenizer, session_len: int) -> RequestFactory:
        """The factory for a model: its vocabulary size and EOS ids from the config and tokenizer."""
        return cls(tokenizer, vocab_size=source.hf_config.vocab_size, session_len=session_len,
                   eos_ids=eos_token_ids(source, tokenizer))

    def tokenize_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt).input_ids
        if not isinstance(prompt, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                            for t in prompt):
            raise InvalidRequestError("prompt must be a string or a list of token ids", "prompt")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(f"prompt has token ids outside [0, {self.vocab_size}): {bad[:5]}", "prompt")
        return list(prompt)

    def make_spec(self, prompt: str | list[int], gen: GenerationConfig | None = None,
                  request_id: str | None = None) -> RequestSpec:
        """Validate and tokenize; raises InvalidRequestError naming the parameter."""
        gen = gen or GenerationConfig()
        if not isinstance(gen, GenerationConfig):
            raise InvalidRequestError("gen_config must be a GenerationConfig", "gen_config")
        ids = self.tokenize_prompt(prompt)
        if not ids:
            raise InvalidRequestError("prompt is empty", "prompt")
        if len(ids) >= self.session_len:
            raise InvalidRequestError(
                f"prompt has {len(ids)} tokens, more than session_len {self.session_len} allows "
                "(at least one token must be left to generate)", "prompt")
        bad_ids = []
        for word in gen.bad_words:
            encoded = self.tokenizer.encode(word, add_special_tokens=False)
            if len(encoded) != 1:
                raise InvalidRequestError(f"bad word {word!r} is not a single token", "bad_words")
            bad_ids.append(encoded[0])
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        seed = gen.random_seed if gen.random_seed is not None else self._rng.getrandbits(62)
        return RequestSpec(request_id, ids, gen, max_tokens=min(len(ids) + gen.max_new_tokens, self.session_len),
                           seed=seed % 2**62, bad_token_ids=tuple(bad_ids))

    def build(self, spec: RequestSpec) -> Request:
        """The Request for a spec, with its own incremental detokenizer."""
        gen = spec.gen
        detok = IncrementalDetokenizer(self.tokenizer, spec.prompt_token_ids,
                                       skip_special_tokens=gen.skip_special_tokens, stop_words=gen.stop_words,
                                       include_stop_str_in_output=gen.include_stop_str_in_output)
        return Request(spec.request_id, spec.prompt_token_ids, gen, self.eos_token_ids, max_tokens=spec.max_tokens,
                       seed=spec.seed, detokenizer=detok, bad_token_ids=spec.bad_token_ids)

    def make_request(self, prompt: str | list[int], gen: GenerationConfig | None = None,
                     request_id: str | None = None) -> Request:
        return self.build(self.make_spec(prompt, gen, request_id))
