"""Stop strings: bounds on count and length, matching pinned to a brute-force reference, bounded cost."""
from __future__ import annotations

import random
import time
import tracemalloc
from pathlib import Path

import pytest

from engine import GenerationConfig, InvalidRequestError
from engine.detokenizer import IncrementalDetokenizer
from engine.generation import MAX_BAD_WORD_CHARS, MAX_BAD_WORDS, MAX_STOP_WORD_CHARS, MAX_STOP_WORDS

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "engine" / "models" / "assets" / "smollm2-tokenizer"


class CharTokenizer:
    """One token per character (id = code point): any text splits into any deltas we like."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


# -- bounds ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    ({"stop_words": ["a" * (MAX_STOP_WORD_CHARS + 1)]}, f"at most {MAX_STOP_WORD_CHARS} characters"),
    ({"stop_words": ["a" * 40_000]}, "got one of 40000"),
    ({"stop_words": [f"s{i}" for i in range(MAX_STOP_WORDS + 1)]}, f"at most {MAX_STOP_WORDS} strings"),
    ({"stop_words": ["ok", ""]}, "non-empty strings"),
    ({"bad_words": ["b" * (MAX_BAD_WORD_CHARS + 1)]}, f"at most {MAX_BAD_WORD_CHARS} characters"),
    ({"bad_words": ["b"] * (MAX_BAD_WORDS + 1)}, f"at most {MAX_BAD_WORDS} strings"),
])
def test_stop_and_bad_word_bounds_are_one_clear_line(kwargs, needle):
    [name] = kwargs
    with pytest.raises(InvalidRequestError) as info:
        GenerationConfig(**kwargs)
    message = str(info.value)
    assert info.value.param == name
    assert message.startswith(name) and needle in message
    assert "\n" not in message and len(message) < 120   # the offending value is never echoed whole


def test_stop_words_at_the_limits_are_accepted():
    words = tuple(f"{i:02d}" + "x" * (MAX_STOP_WORD_CHARS - 2) for i in range(MAX_STOP_WORDS))
    assert GenerationConfig(stop_words=words).stop_words == words


# -- matching pinned to the definition ---------------------------------------------------------------
def reference(text: str, cuts: list[int], words: list[str], include: bool) -> tuple[list[str], str, str | None]:
    """Brute force, straight from the definition: (deltas, flush, stop word).

    Per delta the window is the held text plus the new text; the stop word occurrence in it that
    starts first wins (the shorter on a tie); otherwise the longest suffix of the window that is a
    proper prefix of a stop word is held back. flush() releases what is held.
    """
    words = [w for w in dict.fromkeys(words) if w]
    held, deltas = "", []
    for a, b in zip([0] + cuts, cuts + [len(text)]):
        if a == b:
            continue   # a step with no new text changes nothing
        window, held = held + text[a:b], ""
        found = [(i, i + len(w), w) for w in words for i in range(len(window)) if window.startswith(w, i)]
        if found:
            start, end, word = min(found)
            deltas.append(window[:end] if include else window[:start])
            return deltas, "", word
        hold = max((k for k in range(1, len(window) + 1) for w in words
                    if k < len(w) and w.startswith(window[-k:])), default=0)
        if hold:
            window, held = window[:-hold], window[-hold:]
        deltas.append(window)
    return deltas, held, None


def run_detokenizer(text: str, cuts: list[int], words: list[str], include: bool):
    detok = IncrementalDetokenizer(CharTokenizer(), stop_words=words, include_stop_str_in_output=include)
    deltas = []
    for a, b in zip([0] + cuts, cuts + [len(text)]):
        if a == b:
            continue
        d = detok.step([ord(c) for c in text[a:b]])
        deltas.append(d.text)
        if d.stopped:
            return deltas, detok.flush(), d.stop_word
    return deltas, detok.flush(), None


def test_matching_equals_brute_force_reference_on_random_texts():
    rng = random.Random(1234)
    stopped = 0
    for case in range(4000):
        alphabet = "ab" if case % 2 else "abc"
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        words = []
        for _ in range(rng.randint(1, 4)):
            if text and rng.random() < 0.5:   # often a piece of the text, so matches are common
                i = rng.randrange(len(text))
                words.append(text[i:i + rng.randint(1, 8)])
            else:                             # periodic words exercise the failure tables
                words.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))))
        cuts = sorted(rng.sample(range(1, len(text)), min(rng.randint(0, 12), max(len(text) - 1, 0))))
        include = rng.random() < 0.5
        got = run_detokenizer(text, cuts, words, include)
        assert got == reference(text, cuts, words, include), (text, cuts, words, include)
        stopped += got[2] is not None
    assert stopped > 1500   # the cases really exercised stopping, not only hold-back


def test_a_stop_word_of_the_maximum_length_works():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    stop = ("The quick brown fox jumps over the lazy dog. " * 30)[:MAX_STOP_WORD_CHARS]
    ids = tok.encode("Intro: " + stop + " and a tail", add_special_tokens=False)
    for include, expected in ((False, "Intro: "), (True, "Intro: " + stop)):
        detok = IncrementalDetokenizer(tok, stop_words=[stop], include_stop_str_in_output=include)
        deltas = [detok.step([i]) for i in ids]
        first_stop = next(k for k, d in enumerate(deltas) if d.stopped)
        assert tok.decode(ids[:first_stop + 1]).endswith(stop)   # stopped on the token completing it
        assert deltas[first_stop].stop_word == stop
        assert "".join(d.text for d in deltas) + detok.flush() == expected


def test_many_maximum_length_stop_words_cost_little_memory_and_time():
    rng = random.Random(0)
    # Half the stop words are long runs of "a" that the output keeps almost completing, so the
    # whole maximum length stays held back and every character moves the matchers; the other half
    # differ from their second character on, so no structure shared between them keeps costs down.
    runs = ["a" * (MAX_STOP_WORD_CHARS - 1) + chr(ord("A") + i) for i in range(MAX_STOP_WORDS // 2)]
    distinct = [f"{i:02d}" + "".join(rng.choice("ab") for _ in range(MAX_STOP_WORD_CHARS - 2))
                for i in range(MAX_STOP_WORDS - len(runs))]
    text = "a" * 6000 + "C"
    tracemalloc.start()
    try:
        start = time.perf_counter()
        detok = IncrementalDetokenizer(CharTokenizer(), stop_words=runs + distinct)
        i, deltas = 0, []
        while i < len(text):
            n = rng.randint(1, 4)
            deltas.append(detok.step([ord(c) for c in text[i:i + n]]))
            i += n
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert deltas[-1].stopped and deltas[-1].stop_word == runs[2]
    assert detok.text == "a" * (6000 - (MAX_STOP_WORD_CHARS - 1))
    # Measured on a 2-core CI box: 0.5 MiB peak, 0.35 s under tracemalloc for 2,400 steps. The
    # set-of-every-prefix matcher this replaced peaked at 10 MiB here, growing with the square of
    # the stop words' length (620 MB for one 40,000-character stop string).
    assert peak < 3 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert elapsed < 5, f"{elapsed:.2f} s"
