"""Incremental detokenization and stop-string matching.

Text deltas must be right when one character spans several tokens (byte-level BPE splits multi-byte UTF-8), and stop
strings must match across token boundaries yet never be emitted. So each sequence keeps:
- a decode window (`prefix_offset`, `read_offset`) as in HF's TextStreamer / vLLM: decode a few tokens of context and
  emit only the new suffix, and hold back while the suffix ends in U+FFFD (an incomplete character);
- the text produced so far, of which the last `len(longest stop) - 1` characters are held back until they cannot be the
  start of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: Seq[int], stop: Seq[str] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.stop = list(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        # Start the window inside the prompt so the first output token decodes with its left context (spaces etc.).
        self.ids: list[int] = list(prompt_ids[-4:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""  # all output text decoded so far
        self.emitted = 0  # characters of `text` already handed out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def add_token(self, token_id: int, check_stop: bool = True) -> str | None:
        """Append one output token. Returns the stop string if one now appears in the text (text is cut before it).

        `check_stop=False` (before min_tokens) skips matching; text seen then can no longer end the sequence.
        """
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            self.text += new_text[len(prefix_text):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        if not self.stop or not check_stop:
            return None
        # A new stop string can only start in the last (len(stop) + len(delta)) characters; search from the earliest
        # position not yet emitted so one spanning the hold-back window is found.
        start = max(0, self.emitted - self.hold)
        best: tuple[int, str] | None = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i != -1 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None:
            self.text = self.text[: best[0]]
            return best[1]
        return None

    def take_delta(self, final: bool) -> str:
        """Text that can be emitted now: all of it when final, else all but the stop-string hold-back."""
        if final and self.read_offset < len(self.ids):  # flush an incomplete character at the very end
            self.text += self._decode(self.ids[self.prefix_offset:])[len(self._decode(
                self.ids[self.prefix_offset:self.read_offset])):]
            self.read_offset = len(self.ids)
        end = len(self.text) if final else max(self.emitted, len(self.text) - self.hold)
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta
