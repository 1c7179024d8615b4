"""GenerationConfig: sampling and stopping parameters of one request, validated on creation.

Names and defaults follow LMDeploy's GenerationConfig; presence/frequency penalties, min_p and
multi-token stop words work (LMDeploy accepts the penalties but ignores them).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import InvalidRequestError


@dataclass(frozen=True)
class GenerationConfig:
    """How one request samples and when it stops.

    Sampling is greedy unless do_sample is set and temperature > 0. top_k <= 0 (or -1) turns top-k
    off, top_p 1.0 and min_p 0.0 turn theirs off. repetition_penalty (CTRL/HF style) applies to prompt
    and output tokens; presence and frequency penalties (OpenAI style) to output tokens only.
    logprobs: None for none, 0 for the chosen token's log-probability, k > 0 to add the top-k
    alternatives. random_seed makes sampling reproducible per request, whatever the batch holds.
    """

    max_new_tokens: int = 512
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 50
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    random_seed: int | None = None
    stop_words: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    bad_words: tuple[str, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logprobs: int | None = None

    def __post_init__(self):
        # Accept lists for the sequence fields, store tuples so the config stays hashable and frozen.
        for name in ("stop_words", "stop_token_ids", "bad_words"):
            value = getattr(self, name)
            if value is None:
                value = ()
            elif isinstance(value, (str, int)):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self):
        def bad(name, why):
            raise InvalidRequestError(f"{name} {why}, got {getattr(self, name)!r}", name)

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.max_new_tokens) or self.max_new_tokens <= 0:
            bad("max_new_tokens", "must be a positive integer")
        if not is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            bad("min_new_tokens", "must be an integer >= 0")
        if not is_num(self.temperature) or self.temperature < 0:
            bad("temperature", "must be a number >= 0")
        if not is_num(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not is_int(self.top_k) or self.top_k < -1:
            bad("top_k", "must be an integer >= -1 (0 or -1 turn it off)")
        if not is_num(self.min_p) or not 0 <= self.min_p <= 1:
            bad("min_p", "must be in [0, 1]")
        if not is_num(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", "must be a number > 0")
        for name in ("presence_penalty", "frequency_penalty"):
            if not is_num(getattr(self, name)) or not -2 <= getattr(self, name) <= 2:
                bad(name, "must be in [-2, 2]")
        if self.random_seed is not None and not is_int(self.random_seed):
            bad("random_seed", "must be an integer")
        if self.logprobs is not None and (not is_int(self.logprobs) or not 0 <= self.logprobs <= 20):
            bad("logprobs", "must be an integer in [0, 20]")
        if not all(isinstance(s, str) and s for s in self.stop_words):
            bad("stop_words", "must be non-empty strings")
        if not all(isinstance(s, str) and s for s in self.bad_words):
            bad("bad_words", "must be non-empty strings")
        if not all(is_int(t) and t >= 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "must be non-negative integers")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def replace(self, **changes) -> "GenerationConfig":
        return dataclasses.replace(self, **changes)
