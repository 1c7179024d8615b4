"""Stop-string matching over text that arrives in pieces, linear in the text and in the stop strings.

Owns finding a request's stop strings in its streamed output text. Each stop string gets a KMP
failure table, built once in O(len); a state per stop string (how much of it the text seen so far
ends with) is carried from piece to piece, so every new character costs amortized O(1) per stop
string and no text is ever scanned twice. The same states answer the detokenizer's hold-back
question (the longest suffix of the text that could still grow into a stop string) without building
the set of every prefix of every stop string: that set made one request with a 40,000-character
stop string cost 620 MB in the server and 755 MB in the engine process (issue 9, finding 1).
"""
from __future__ import annotations

from array import array
from collections.abc import Sequence


def failure_table(word: str) -> array:
    """KMP prefix function: entry i is the length of the longest proper border of word[:i + 1]."""
    table = array("i", [0]) * len(word)   # 4 bytes a character: 4 KiB for a 1,024-character stop string
    k = 0
    for i in range(1, len(word)):
        while k and word[i] != word[k]:
            k = table[k - 1]
        if word[i] == word[k]:
            k += 1
        table[i] = k
    return table


class StopStringMatcher:
    """Feeds text piece by piece; reports the first stop string completed and what may still start one.

    After feed() reports a match the matcher is spent: the caller stops and feeds nothing more
    (or calls reset()).
    """

    def __init__(self, stop_words: Sequence[str]):
        self.words: tuple[str, ...] = tuple(dict.fromkeys(s for s in stop_words if s))   # dedupe, drop ""
        self._tables = [failure_table(w) for w in self.words]
        self._state = [0] * len(self.words)   # per word: how many of its first characters the text ends with

    @property
    def pending(self) -> int:
        """Length of the longest suffix of the text fed so far that is a proper prefix of a stop string.

        It never exceeds the text fed since the last reset(), and no match can start before it.
        """
        return max(self._state, default=0)

    def reset(self) -> None:
        """Forget the text fed so far: later matches start in later text."""
        self._state = [0] * len(self.words)

    def feed(self, text: str) -> tuple[int, str] | None:
        """Advance over text; the stop string completed in it that starts first, or None.

        Returns (start, word) with start relative to the beginning of text: negative when the match
        began in earlier pieces (at most `pending`, as it was before this call, characters back). Of
        the stop strings completed in this piece the earliest start wins; on a tie of starts the
        shorter one, which completed first.
        """
        best: tuple[int, int, str] | None = None   # (start, end, word)
        for k, word in enumerate(self.words):
            end = self._advance(k, word, text)
            if end is not None and (best is None or (end - len(word), end) < best[:2]):
                best = (end - len(word), end, word)
        return None if best is None else (best[0], best[2])

    def _advance(self, k: int, word: str, text: str) -> int | None:
        """Run word k's KMP automaton over text; the end offset of its first completion, or None."""
        table, n, first = self._tables[k], len(word), word[0]
        j, i, size = self._state[k], 0, len(text)
        while i < size:
            if j == 0:
                # Nothing of the word is pending: jump to its first character's next occurrence
                # (str.find runs in C), so text that never starts the word costs almost nothing.
                i = text.find(first, i)
                if i < 0:
                    break
                j, i = 1, i + 1
            else:
                c = text[i]
                while j and c != word[j]:
                    j = table[j - 1]
                if c == word[j]:
                    j += 1
                i += 1
            if j == n:
                self._state[k] = j
                return i
        self._state[k] = j
        return None
