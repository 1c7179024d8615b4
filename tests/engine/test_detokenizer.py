"""IncrementalDetokenizer: deltas rebuild tokenizer.decode, UTF-8 hold-back, stop strings."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from engine.detokenizer import DetokenizerDelta, IncrementalDetokenizer

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "engine" / "models" / "assets" / "smollm2-tokenizer"

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 3.14, isn't it?",
    "你好，请介绍一下自己。今天天气很好",
    "👍🏽🚀 ok",
    "Mixed: café naïve 日本語\n\n  indented line\n- bullet 🎉\ttab end",
]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def run(detok: IncrementalDetokenizer, ids, chunk_sizes=(1,)) -> list[DetokenizerDelta]:
    """Feed ids in chunks cycling through chunk_sizes; stop feeding once a stop word completed."""
    deltas, i, k = [], 0, 0
    while i < len(ids):
        n = chunk_sizes[k % len(chunk_sizes)]
        deltas.append(detok.step(ids[i:i + n]))
        i, k = i + n, k + 1
        if deltas[-1].stopped:
            break
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_one_token_at_a_time_matches_full_decode(tok, text):
    ids = encode(tok, text)
    detok = IncrementalDetokenizer(tok)
    deltas = run(detok, ids)
    assert all(isinstance(d.text, str) and "\ufffd" not in d.text for d in deltas)
    assert not any(d.stopped for d in deltas)
    assert detok.flush() == ""
    assert "".join(d.text for d in deltas) == tok.decode(ids) == text
    assert detok.text == text


def test_multibyte_chars_are_held_until_complete(tok):
    # The emoji's bytes are split over several byte-level tokens: nothing shows until it is whole.
    ids = encode(tok, "👍🏽")
    assert len(ids) > 2
    detok = IncrementalDetokenizer(tok)
    texts = [d.text for d in run(detok, ids)]
    assert texts[0] == ""
    assert "".join(texts) == "👍🏽"


@pytest.mark.parametrize("chunk_sizes", [(2,), (3, 1), (1, 4, 2), (100,)])
@pytest.mark.parametrize("text", TEXTS)
def test_chunked_feeding_gives_same_text(tok, text, chunk_sizes):
    ids = encode(tok, text)
    detok = IncrementalDetokenizer(tok)
    out = "".join(d.text for d in run(detok, ids, chunk_sizes)) + detok.flush()
    assert out == tok.decode(ids)


def test_flush_drops_truncated_utf8_tail(tok):
    # Generation cut by max_new_tokens in the middle of a character: the broken character is dropped.
    ids = encode(tok, "ok 🚀")[:-1]
    assert tok.decode(ids).endswith("\ufffd")
    detok = IncrementalDetokenizer(tok)
    out = "".join(d.text for d in run(detok, ids))
    tail = detok.flush()
    assert "\ufffd" not in out + tail
    assert out + tail == tok.decode(ids).rstrip("\ufffd") == detok.text


def test_prompt_context_gives_right_leading_text(tok):
    prompt = encode(tok, "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    output = encode(tok, "Hello! How can I help you today? 你好")
    detok = IncrementalDetokenizer(tok, prompt)
    deltas = run(detok, output)
    assert deltas[0].text == tok.decode(output[:1]) == "Hello"
    assert "".join(d.text for d in deltas) + detok.flush() == tok.decode(output)
    # Prompt text never leaks into the output, and a leading space is kept after a word.
    detok = IncrementalDetokenizer(tok, encode(tok, "Say"))
    assert detok.step(encode(tok, " hi")).text == " hi"


def test_stop_word_spanning_tokens(tok):
    ids = encode(tok, "The answer is 42. ###END more text")
    detok = IncrementalDetokenizer(tok, stop_words=["###END"])
    deltas = run(detok, ids)
    assert [d.stopped for d in deltas] == [False] * (len(deltas) - 1) + [True]
    assert tok.decode(ids[:len(deltas)]).endswith("###END")       # stopped on the END token
    assert deltas[-1].stop_word == "###END"
    assert "".join(d.text for d in deltas) == "The answer is 42. "
    # Nothing afterwards: later steps and flush emit no text and still report the stop.
    later = detok.step(encode(tok, " more"))
    assert later.text == "" and later.stopped and later.stop_word == "###END"
    assert detok.flush() == ""
    assert detok.text == "The answer is 42. "


def test_stop_word_included_in_output(tok):
    ids = encode(tok, "The answer is 42. ###END more text")
    detok = IncrementalDetokenizer(tok, stop_words=["###END"], include_stop_str_in_output=True)
    deltas = run(detok, ids)
    assert deltas[-1].stopped
    assert "".join(d.text for d in deltas) == "The answer is 42. ###END" == detok.text


def test_partial_stop_match_is_held_then_released(tok):
    ids = encode(tok, "a ## b")                  # 'a', ' ##', ' b'
    detok = IncrementalDetokenizer(tok, stop_words=["###END"])
    texts = [detok.step([i]).text for i in ids]
    assert texts == ["a", " ", "## b"]           # "##" waits until " b" rules the stop word out
    assert detok.flush() == ""
    assert detok.text == "a ## b"


def test_partial_stop_match_released_at_flush(tok):
    ids = encode(tok, "done ##")
    detok = IncrementalDetokenizer(tok, stop_words=["###END"])
    out = "".join(d.text for d in run(detok, ids))
    assert out == "done "
    assert detok.flush() == "##"
    assert detok.text == "done ##"


def test_stop_word_starting_inside_a_token(tok):
    ids = encode(tok, "The answer is 42.")      # ' answer' holds the start of "swer is"
    detok = IncrementalDetokenizer(tok, stop_words=["swer is"])
    deltas = run(detok, ids)
    assert deltas[-1].stopped and deltas[-1].stop_word == "swer is"
    assert len(deltas) == 3                      # 'The', ' answer', ' is'
    assert "".join(d.text for d in deltas) == "The an"


def test_stop_word_inside_one_token(tok):
    detok = IncrementalDetokenizer(tok, stop_words=["ns"], include_stop_str_in_output=True)
    d = detok.step(encode(tok, " answer"))
    assert (d.text, d.stopped, d.stop_word) == (" ans", True, "ns")


def test_earliest_of_two_stop_words_wins(tok):
    ids = encode(tok, "alpha beta gamma delta")
    # Both complete in the same chunk; "beta" comes first in the text though listed second.
    detok = IncrementalDetokenizer(tok, stop_words=["gamma", "beta"])
    d = detok.step(ids)
    assert (d.text, d.stopped, d.stop_word) == ("alpha ", True, "beta")
    # Token by token, a word seen earlier stops generation before a later one can complete.
    detok = IncrementalDetokenizer(tok, stop_words=["delta", "gamma"])
    assert "".join(x.text for x in run(detok, ids)) == "alpha beta "
    assert detok.step([]).stop_word == "gamma"


def test_stop_word_starting_in_held_text_of_an_earlier_step(tok):
    ids = encode(tok, "fooxSTOPbar")            # 'foo', 'x', 'STOP', 'bar'
    detok = IncrementalDetokenizer(tok, stop_words=["xSTOP"])
    deltas = run(detok, ids)
    assert [d.text for d in deltas] == ["foo", "", ""]   # 'x' held: it may start "xSTOP"
    assert deltas[-1].stopped and detok.text == "foo"


@pytest.mark.parametrize("chunk_sizes", [(1,), (2,), (3, 1, 5)])
def test_stop_words_in_longer_text_match_reference(tok, chunk_sizes):
    text = "Step 1: mix.\n## Step 2: bake 你好 at 200°C.\n### Step 3: serve 🍰.\n</s> trailing"
    ids = encode(tok, text)
    full = tok.decode(ids)
    for stops in (["</s>"], ["###", "</s>"], ["Step 3", "200°C"], ["好 at"], ["🍰"], ["absent"]):
        detok = IncrementalDetokenizer(tok, stop_words=stops)
        out = "".join(d.text for d in run(detok, ids, chunk_sizes)) + detok.flush()
        cut = min((full.find(s) for s in stops if s in full), default=len(full))
        assert out == full[:cut], stops


def test_decode_window_stays_small(tok):
    # The hot-loop cost must not grow with the output: only a few ids are ever decoded.
    ids = encode(tok, " ".join(TEXTS) * 5)
    detok = IncrementalDetokenizer(tok, encode(tok, "prompt " * 50))
    widest = 0
    for i in ids:
        detok.step([i])
        widest = max(widest, len(detok._ids))
    assert widest <= 8
    assert detok.text + detok.flush() == tok.decode(ids)


def test_prompt_never_matches_stop_words(tok):
    detok = IncrementalDetokenizer(tok, encode(tok, "Write until ###END"), stop_words=["###END"])
    d = detok.step(encode(tok, " ok"))
    assert (d.text, d.stopped) == (" ok", False)


def test_skip_special_tokens(tok):
    ids = encode(tok, "Hi<|im_end|> there")
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids
    skipped = IncrementalDetokenizer(tok, skip_special_tokens=True)
    kept = IncrementalDetokenizer(tok, skip_special_tokens=False)
    out_skipped = "".join(d.text for d in run(skipped, ids)) + skipped.flush()
    out_kept = "".join(d.text for d in run(kept, ids)) + kept.flush()
    assert out_skipped == "Hi there" == tok.decode(ids, skip_special_tokens=True)
    assert out_kept == "Hi<|im_end|> there" == tok.decode(ids, skip_special_tokens=False)


def test_special_token_as_stop_word_needs_kept_specials(tok):
    ids = encode(tok, "Hi<|im_end|> there")
    detok = IncrementalDetokenizer(tok, skip_special_tokens=False, stop_words=["<|im_end|>"])
    deltas = run(detok, ids)
    assert deltas[-1].stopped and "".join(d.text for d in deltas) == "Hi"


def test_no_output_and_empty_steps(tok):
    detok = IncrementalDetokenizer(tok, encode(tok, "prompt"), stop_words=["", "x"])
    assert detok.step([]) == DetokenizerDelta("")
    assert detok.flush() == "" and detok.text == ""


def test_empty_step_and_skipped_special_keep_context(tok):
    # Context is kept across steps that add no text, so the next token decodes as it would in
    # the full sequence (this matters for SentencePiece's leading space; here it must not break).
    detok = IncrementalDetokenizer(tok, encode(tok, "Say"))
    assert detok.step([]).text == ""
    assert detok.step(encode(tok, "<|im_end|>")).text == ""
    assert detok.step(encode(tok, " hi")).text == " hi"
    assert detok.text == tok.decode(encode(tok, "<|im_end|> hi"), skip_special_tokens=True)
