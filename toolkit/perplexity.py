"""Perplexity through the engine: the model as served (weight format, KV-cache format, kernels) scores a
text, so a quantized configuration's quality is measured on the same path that serves it.

The text is tokenized once and cut into non-overlapping windows of `window` tokens (the last one
shorter); every window is one request whose prompt is scored (GenerationConfig.prompt_logprobs:
log P(token | the tokens before it in its window)); the engine batches and chunks them as it would any
prompts. PPL = exp(-mean log-probability) over every scored token: the first token of each window
is not scored (nothing precedes it), as in transformers' fixed-length perplexity recipe with
stride = window.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BUILTIN_TEXT = "builtin"


@dataclass
class PerplexityResult:
    perplexity: float
    mean_logprob: float
    tokens_scored: int
    windows: int
    window: int
    text: str  # "builtin" or the file
    text_chars: int
    seconds: float
    model: str
    model_format: str | None
    quant_policy: int

    def to_dict(self) -> dict:
        return asdict(self)


def load_text(spec: str) -> str:
    """`builtin`: the held-out text that ships with Python and is never used for calibration
    (engine/quant/calib_data.py); else a UTF-8 text file."""
    if spec == BUILTIN_TEXT:
        from engine.quant.calib_data import heldout_text

        return heldout_text()
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--text {spec}: no such file (or use --text builtin)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--text {spec}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise ValueError(f"--text {spec}: the file is empty")
    return text


def perplexity(engine, text: str, *, window: int = 1024, max_tokens: int | None = None,
               text_name: str = BUILTIN_TEXT, model_name: str = "") -> PerplexityResult:
    """Score `text` with `engine` (an LLMEngine) in windows of `window` tokens; `max_tokens` caps how
    much of the text is used (the first tokens)."""
    from engine.generation import GenerationConfig

    if window < 2:
        raise ValueError(f"window {window}: must be at least 2 tokens")
    window = min(window, engine.session_len - 1)  # each window is a prompt plus one sampled token
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    windows = [ids[i:i + window] for i in range(0, len(ids), window)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise ValueError("the text has fewer than 2 tokens: nothing to score")
    started = time.perf_counter()
    gen = GenerationConfig(max_new_tokens=1, prompt_logprobs=True, ignore_eos=True)
    requests = engine.generate(windows, gen)
    seconds = time.perf_counter() - started
    scores = [lp for r in requests for lp in r.prompt_logprobs]
    if any(lp is None for lp in scores):
        raise RuntimeError("the engine left prompt tokens unscored")  # a bug, never the user's input
    mean = sum(scores) / len(scores)
    config = engine.config
    return PerplexityResult(perplexity=math.exp(-mean), mean_logprob=mean, tokens_scored=len(scores),
                            windows=len(windows), window=window, text=text_name, text_chars=len(text),
                            seconds=seconds, model=model_name, model_format=config.model_format,
                            quant_policy=config.quant_policy)
