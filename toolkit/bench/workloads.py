"""Prompt sources for load tests over HTTP: random token-length prompts, ShareGPT files, a built-in chat set.

Every source returns a list of WorkItem (prompt text, max_tokens, the prompt's token count when it is
known). The locustfile turns a prompt into `messages` (chat endpoint) or `prompt` (completions).

Random prompts follow vLLM's random dataset: decode random token ids drawn from the tokenizer's
normal (non-special) ids, re-encode the text and trim it to the target length, since decoding and
encoding again does not keep the length. The tokenizer is the served model's when it is found
locally (a directory named by --tokenizer, the model name or its root, or in the opsctl model cache),
else the SmolLM2 tokenizer committed with the engine. Tokenizers load with the `tokenizers` package
alone (no torch), so `opsctl bench` starts quickly.
"""
from __future__ import annotations

import functools
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

ASSET_TOKENIZER = Path(__file__).resolve().parents[2] / "engine" / "models" / "assets" / "smollm2-tokenizer"
SHAREGPT_MAX_TOKENS = 1024  # cap on a ShareGPT answer's length used as max_tokens (without --output-len)
SHAREGPT_MIN_TOKENS = 4  # vLLM drops pairs shorter than this on either side
# Tokens a random prompt reaches for when decoding and re-encoding shrank it (rounds of top-up).
_TOPUP_ROUNDS = 8


class WorkloadError(ValueError):
    """A workload that cannot be built (bad file, bad range); its message is one line for the user."""


@dataclass
class WorkItem:
    prompt: str
    max_tokens: int
    prompt_tokens: int | None = None  # as counted by the local tokenizer (the server's count comes from usage)

    def to_json(self) -> dict:
        return asdict(self)


def parse_range(text: str | int | None, name: str) -> tuple[int, int] | None:
    """'128' -> (128, 128); '64:256' -> (64, 256) (uniform, inclusive)."""
    if text is None:
        return None
    low, _, high = str(text).partition(":")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise WorkloadError(f"{name} {text!r}: use N or MIN:MAX") from None
    if lo < 1 or hi < lo:
        raise WorkloadError(f"{name} {text!r}: need 1 <= MIN <= MAX")
    return lo, hi


# -- tokenizers ----------------------------------------------------------------------------------

class _Tok:
    """The few tokenizer calls a workload needs, over `tokenizers` or (fallback) transformers."""

    def __init__(self, path: Path):
        self.path = path
        if (path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
            self.vocab_size = self._tok.get_vocab_size()
            self.special_ids = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
            self._encode = lambda s: self._tok.encode(s, add_special_tokens=False).ids
            self.decode = lambda ids: self._tok.decode(ids, skip_special_tokens=True)
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(path))
            self.vocab_size = len(tok)
            self.special_ids = set(tok.all_special_ids)
            self._encode = lambda s: tok(s, add_special_tokens=False).input_ids
            self.decode = lambda ids: tok.decode(ids, skip_special_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))


def _has_tokenizer(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def _cache_models_dir() -> Path:
    # Same rule as engine.models.source.model_cache_dir, without importing the engine (and torch).
    configured = os.environ.get("OPSCTL_CACHE_DIR")
    return (Path(configured).expanduser() if configured else Path.home() / ".cache" / "opsctl") / "models"


def find_tokenizer(*names: str | None) -> Path:
    """The first local directory with a tokenizer among the names (paths or opsctl cache names), else the asset."""
    for name in names:
        if not name:
            continue
        for candidate in (Path(name).expanduser(), _cache_models_dir() / name):
            try:
                if _has_tokenizer(candidate):
                    return candidate
            except OSError:
                continue
    return ASSET_TOKENIZER


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: Path) -> _Tok:
    """The tokenizer in `path`, read once per process: a tune's hundred probes build their prompts with the
    same one (0.35 s a read for a 49k-token vocabulary here)."""
    try:
        return _Tok(path)
    except Exception as e:  # noqa: BLE001 - any failure to read a tokenizer is the user's file
        raise WorkloadError(f"cannot load the tokenizer in {path}: {e}") from None


# -- sources -------------------------------------------------------------------------------------

def random_prompts(tok: _Tok, count: int, input_len: tuple[int, int], output_len: tuple[int, int],
                   seed: int = 0, on_item: Callable[[], None] | None = None) -> list[WorkItem]:
    """`count` prompts of uniform random token lengths, each of its own random token ids (no shared prefix).

    `on_item` is called after each prompt (a progress bar: ~12 ms a 1024-token prompt on this project's CPUs).
    """
    rng = random.Random(seed)
    normal = [i for i in range(tok.vocab_size) if i not in tok.special_ids]
    items = []
    for _ in range(count):
        target = rng.randint(*input_len)
        ids = rng.choices(normal, k=target)
        text = tok.decode(ids)
        got = tok.encode(text)
        for _ in range(_TOPUP_ROUNDS):
            if len(got) >= target:
                break
            extra = rng.choices(normal, k=target - len(got))
            text = text + tok.decode(extra)
            got = tok.encode(text)
        if len(got) > target:
            text = tok.decode(got[:target])
            got = tok.encode(text)
        items.append(WorkItem(prompt=text, max_tokens=rng.randint(*output_len), prompt_tokens=len(got)))
        if on_item:
            on_item()
    return items


def sharegpt_prompts(path: str | Path, tok: _Tok, count: int, output_len: tuple[int, int] | None = None,
                     seed: int = 0) -> list[WorkItem]:
    """The first human turn of each conversation; its gpt answer's token length (capped) as max_tokens.

    Malformed entries are skipped; a file that is not JSON, not a list, or has no usable entry is a
    WorkloadError. Entries are shuffled with the seed and repeated when the file has fewer than `count`.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkloadError(f"ShareGPT file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WorkloadError(f"cannot read ShareGPT file {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise WorkloadError(f"ShareGPT file {path} is not JSON ({e.msg} at line {e.lineno}); expected a list of "
                            '{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}') from None
    if not isinstance(data, list):
        raise WorkloadError(f"ShareGPT file {path} holds a {type(data).__name__}; expected a list of conversations")
    pairs = [p for p in (_sharegpt_pair(entry) for entry in data) if p is not None]
    rng = random.Random(seed)
    rng.shuffle(pairs)
    items = []
    for prompt, answer in pairs:
        prompt_ids, answer_len = tok.encode(prompt), len(tok.encode(answer))
        if len(prompt_ids) < SHAREGPT_MIN_TOKENS or answer_len < SHAREGPT_MIN_TOKENS:
            continue
        max_tokens = rng.randint(*output_len) if output_len else min(answer_len, SHAREGPT_MAX_TOKENS)
        items.append(WorkItem(prompt=prompt, max_tokens=max_tokens, prompt_tokens=len(prompt_ids)))
        if len(items) >= count:
            break
    if not items:
        raise WorkloadError(f"ShareGPT file {path} has no usable conversation (need a human turn followed by a gpt "
                            f"turn, each at least {SHAREGPT_MIN_TOKENS} tokens)")
    return [items[i % len(items)] for i in range(count)]


def _sharegpt_pair(entry) -> tuple[str, str] | None:
    if not isinstance(entry, dict):
        return None
    turns = entry.get("conversations")
    if not isinstance(turns, list):
        return None
    for first, second in zip(turns, turns[1:]):
        if not (isinstance(first, dict) and isinstance(second, dict)):
            return None
        if first.get("from") == "human" and second.get("from") == "gpt":
            prompt, answer = first.get("value"), second.get("value")
            if isinstance(prompt, str) and isinstance(answer, str) and prompt.strip():
                return prompt, answer
            return None
    return None


CHAT_PROMPTS = (
    "What is the capital of France?",
    "Explain what a hash table is in two sentences.",
    "Write a haiku about autumn rain.",
    "Give me three tips for a good night's sleep.",
    "What is the difference between a virus and a bacterium?",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
    "How do I reverse a list in Python?",
    "Why is the sky blue?",
    "Suggest a name for a small bakery by the sea.",
    "What are the main causes of inflation?",
    "Translate 'good morning, how are you?' into Spanish.",
    "Write a short, polite email declining a meeting invitation.",
    "How many legs does a spider have, and why?",
    "Explain recursion to a ten-year-old.",
    "What should I pack for a weekend hiking trip?",
    "Compare trains and planes for a 500 km journey.",
    "Write a limerick about a cat who loves coffee.",
    "What is photosynthesis?",
    "List five healthy breakfast ideas.",
    "How does a refrigerator keep food cold?",
    "What is the Pythagorean theorem? Give an example.",
    "Tell me a fun fact about octopuses.",
    "How do I make a simple tomato sauce?",
    "What is the difference between weather and climate?",
    "Describe the city of Tokyo in three sentences.",
    "Quelle est la plus haute montagne de France ?",
    "Peux-tu m'expliquer comment fonctionne un moteur électrique ?",
    "Was ist der Unterschied zwischen Wetter und Klima?",
    "Schreibe ein kurzes Gedicht über den Winter.",
    "¿Cuáles son los beneficios de aprender un segundo idioma?",
    "¿Cómo se prepara una tortilla de patatas?",
    "Qual è la differenza tra un lago e un mare?",
    "Como posso melhorar a minha produtividade no trabalho?",
    "Расскажи коротко, почему небо голубое.",
    "请用三句话介绍一下长城。",
    "日本の四季について簡単に説明してください。",
    "한국의 전통 음식 세 가지를 알려 주세요.",
    "ما هي عاصمة مصر؟",
)


def chat_prompts(tok: _Tok, count: int, output_len: tuple[int, int], seed: int = 0) -> list[WorkItem]:
    """The built-in chat set, shuffled with the seed and repeated to `count`."""
    rng = random.Random(seed)
    order = list(CHAT_PROMPTS)
    rng.shuffle(order)
    return [WorkItem(prompt=p, max_tokens=rng.randint(*output_len), prompt_tokens=len(tok.encode(p)))
            for p in (order[i % len(order)] for i in range(count))]


def build_workload(dataset: str, tok: _Tok, count: int, *, input_len: tuple[int, int],
                   output_len: tuple[int, int] | None, default_output_len: tuple[int, int], seed: int = 0,
                   on_item: Callable[[], None] | None = None) -> tuple[list[WorkItem], dict]:
    """(items, description) for --dataset random | chat | sharegpt:PATH."""
    if dataset == "random":
        items = random_prompts(tok, count, input_len, output_len or default_output_len, seed, on_item)
        desc = {"dataset": "random", "input_len": list(input_len), "output_len": list(output_len or default_output_len)}
    elif dataset == "chat":
        items = chat_prompts(tok, count, output_len or default_output_len, seed)
        desc = {"dataset": "chat", "output_len": list(output_len or default_output_len)}
    elif dataset.startswith("sharegpt:"):
        path = dataset.partition(":")[2]
        if not path:
            raise WorkloadError("--dataset sharegpt:PATH needs the path of a ShareGPT JSON file")
        items = sharegpt_prompts(path, tok, count, output_len, seed)
        desc = {"dataset": "sharegpt", "path": str(path), "output_len": list(output_len) if output_len else None}
    else:
        raise WorkloadError(f"unknown dataset {dataset!r}: use random, chat or sharegpt:PATH")
    desc.update(seed=seed, tokenizer=str(tok.path))
    return items, desc


def describe(items: list[WorkItem], base: dict) -> dict:
    """The workload description of one slice of items: the source plus counts and mean lengths."""
    known = [i.prompt_tokens for i in items if i.prompt_tokens is not None]
    return {**base, "num_items": len(items),
            "mean_prompt_tokens": round(sum(known) / len(known), 1) if known else None,
            "mean_max_tokens": round(sum(i.max_tokens for i in items) / max(len(items), 1), 1)}
