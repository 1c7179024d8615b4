"""Incremental detokenization of one request's generated ids into text deltas.

Owns two things, both per request and per generated token, so both stay O(few tokens) a step:
- UTF-8 safe incremental decoding (the vLLM/TGI prefix_offset/read_offset technique): only a
  small window of ids is decoded each step, never the whole output, and text is emitted only
  once the window no longer ends in an incomplete multi-byte character.
- Stop strings: the first (earliest) stop word in the output text finishes the request; text
  that could still become the start of a stop word is held back until resolved either way. The
  matching itself (linear in the text, O(len) memory per stop word) is stop_strings.py's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .stop_strings import StopStringMatcher

# Prompt ids used as decoding context for the first output token: byte-level and SentencePiece
# tokenizers decide a token's leading space from its left neighbour. vLLM uses 5 as well.
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


def _backend_decode(tokenizer):
    """The Rust `tokenizers` decode behind a transformers fast tokenizer, where tokenizer.decode is exactly it.

    transformers' decode wraps it in ~3x its own cost of Python (to_py_obj over the ids, kwargs
    plumbing): two decodes a step per stream made that the API process's largest cost after
    socket writes. Used only when neither decode nor _decode is overridden and no clean-up of
    tokenization spaces applies, so the text is byte-identical; anything else takes tokenizer.decode.
    """
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: the plain path
        return None
    if not (isinstance(tokenizer, TokenizersBackend)
            and type(tokenizer).decode is PreTrainedTokenizerBase.decode
            and type(tokenizer)._decode is TokenizersBackend._decode
            and not getattr(tokenizer, "clean_up_tokenization_spaces", True)
            and getattr(tokenizer, "_tokenizer", None) is not None):
        return None
    backend = tokenizer._tokenizer.decode

    def fast(ids, skip_special_tokens):
        return backend(ids if isinstance(ids, list) else list(ids), skip_special_tokens=skip_special_tokens)
    return fast


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
        self._fast_decode = _backend_decode(tokenizer)
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
        self._stops = StopStringMatcher(stop_words)
        self._include_stop = include
        # Decoded output text not shown yet because it might start a stop word: always the last
        # self._stops.pending characters of the text. Any future match must start inside it (the
        # matcher's states say how far back a match in progress began), so a stop word found in
        # held + new text is never cut from text already emitted.
        self._held = ""

    def _decode(self, ids: Sequence[int]) -> str:
        if self._fast_decode is not None:
            return self._fast_decode(ids, self._skip_special_tokens)
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
        match = self._stops.feed(new_text)
        offset = len(self._held)   # where new_text starts in window
        self._held = ""
        if match is not None:
            start, word = match
            start += offset
            out = window[:start + len(word)] if self._include_stop else window[:start]
            self._stopped = DetokenizerDelta(out, True, word)
            self._chunks.append(out)
            return self._stopped
        if final:
            self._stops.reset()   # the held text is released: no later match may start in it
        else:
            hold = self._stops.pending   # <= len(window): it grew by at most len(new_text)
            if hold:
                window, self._held = window[:-hold], window[-hold:]
        if window:
            self._chunks.append(window)
        return DetokenizerDelta(window)
