"""Incremental detokenization of one request's generated ids into text deltas.

Owns two things, both per request and per generated token, so both stay O(few tokens) a step:
- UTF-8 safe incremental decoding (the vLLM/TGI prefix_offset/read_offset technique): only a
  small window of ids is decoded each step, never the whole output, and text is emitted only
  once the window no longer ends in an incomplete multi-byte character.
- Stop strings: the first (earliest) stop word in the output text finishes the request; text
  that could still become the start of a stop word is held back until resolved either way.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Prompt ids used as decoding context for the first output token: byte-level and SentencePiece
# tokenizers decide a token's leading space from its left neighbour. vLLM uses 5 as well.
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


@dataclass
class DetokenizerDelta:
    """What one step produced: text safe to show now ("" when held back) and whether it stopped."""

    text: str
    stopped: bool = False
    stop_word: str | None = None


class IncrementalDetokenizer:
    """Turns a request's generated ids into text deltas, holding back what is not safe to show.

    Invariant: the concatenation of every step's text plus flush() equals
    tokenizer.decode(output_ids) (cut at the first stop word, if any). After a stop word completes
    the detokenizer is done: later steps return empty text with stopped=True.
    """

    def __init__(self, tokenizer, prompt_token_ids: Sequence[int] = (), *, skip_special_tokens: bool = True,
                 stop_words: Sequence[str] = (), include_stop_str_in_output: bool = False):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._init_offsets(prompt_token_ids)
        self._init_stop_words(stop_words, include_stop_str_in_output)
        self._chunks: list[str] = []       # every piece of text emitted, joined lazily by .text
        self._stopped: DetokenizerDelta | None = None

    def _init_offsets(self, prompt_token_ids: Sequence[int]) -> None:
        # Only the window ids[prefix_offset:] is kept; it is trimmed each time text is emitted,
        # so prefix_offset is always 0 and read_offset marks where the unemitted ids begin.
        self._ids = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._read_offset = len(self._ids)
        self._prefix_text = self._decode(self._ids)

    def _init_stop_words(self, stop_words: Sequence[str], include: bool) -> None:
        self._stop_words = tuple(dict.fromkeys(s for s in stop_words if s))   # dedupe, drop ""
        self._include_stop = include
        # Every proper prefix of every stop word: the hold-back check is then one set lookup per
        # candidate suffix length (at most max_len - 1 lookups a step).
        self._stop_prefixes = {s[:i] for s in self._stop_words for i in range(1, len(s))}
        self._max_hold = max((len(s) for s in self._stop_words), default=1) - 1
        # Decoded output text not shown yet because it might start a stop word. Any future match
        # must start inside it: a match starting in emitted text would overlap its end, so that
        # end was a stop-word prefix and would have been held. Searching held + new text thus
        # covers the region from len(emitted) - max_len + 1 on, the only place a new match can be.
        self._held = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    @property
    def text(self) -> str:
        return "".join(self._chunks)

    def step(self, new_token_ids: Sequence[int]) -> DetokenizerDelta:
        if self._stopped is not None:
            return DetokenizerDelta("", True, self._stopped.stop_word)
        self._ids.extend(new_token_ids)
        return self._emit(self._decode_new_text(), final=False)

    def flush(self) -> str:
        """Text still held back, at the end of a request that did not stop on a stop word.

        An incomplete UTF-8 tail (the output ended inside a multi-byte character, e.g. cut by
        max_new_tokens mid-emoji) is dropped rather than shown as U+FFFD: we never emit a broken
        character. A held partial stop word is released as plain text since it can no longer complete.
        """
        if self._stopped is not None:
            return ""
        tail = self._decode(self._ids)[len(self._prefix_text):] if len(self._ids) > self._read_offset else ""
        tail = tail.rstrip(_REPLACEMENT_CHAR)
        self._ids, self._read_offset, self._prefix_text = [], 0, ""
        return self._emit(tail, final=True).text

    def _decode_new_text(self) -> str:
        """Text of the ids past read_offset, or "" while it ends in an incomplete character."""
        new_text = self._decode(self._ids)
        # A trailing U+FFFD means the last token(s) carry only part of a multi-byte character
        # (Chinese, emoji in byte-level BPE): wait for the rest. A U+FFFD in the middle is a real
        # invalid sequence from the model and is emitted like tokenizer.decode would.
        # No new text (a skipped special token, an empty step): keep the old context rather than
        # slide onto ids that decode to "", which would lose a SentencePiece token's leading space.
        if len(new_text) <= len(self._prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            return ""
        delta = new_text[len(self._prefix_text):]
        # Slide the window: the ids just decoded become the context of the next step.
        self._ids = self._ids[self._read_offset:]
        self._read_offset = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        return delta

    def _emit(self, new_text: str, final: bool) -> DetokenizerDelta:
        if not new_text and not (final and self._held):
            return DetokenizerDelta("")
        window = self._held + new_text
        self._held = ""
        match = self._find_stop(window)
        if match is not None:
            start, word = match
            out = window[:start + len(word)] if self._include_stop else window[:start]
            self._stopped = DetokenizerDelta(out, True, word)
            self._chunks.append(out)
            return self._stopped
        if not final:
            hold = self._held_suffix_len(window)
            if hold:
                window, self._held = window[:-hold], window[-hold:]
        if window:
            self._chunks.append(window)
        return DetokenizerDelta(window)

    def _find_stop(self, window: str) -> tuple[int, str] | None:
        """Earliest stop word in window; on a tie of starts the shorter one, which completed first."""
        best: tuple[int, int, str] | None = None
        for word in self._stop_words:
            i = window.find(word)
            if i >= 0 and (best is None or (i, i + len(word)) < best[:2]):
                best = (i, i + len(word), word)
        return None if best is None else (best[0], best[2])

    def _held_suffix_len(self, window: str) -> int:
        """Length of the longest suffix of window that is a proper prefix of some stop word."""
        for k in range(min(self._max_hold, len(window)), 0, -1):
            if window[-k:] in self._stop_prefixes:
                return k
        return 0
