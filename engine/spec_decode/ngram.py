"""Prompt-lookup (n-gram) proposer: no model, drafts copied from the sequence's own history.

For the last n tokens (n from `max_n` down to `min_n`), find their most recent earlier occurrence in prompt + output
and propose the tokens that followed it. Drafts are deterministic, so their distribution is one-hot: the rejection
sampler accepts draft x with probability target_probs[x] (exactly the target's distribution for every sampling knob).
Pays off on extractive / repetitive tasks (code edits, summaries quoting the input); the policy turns it off elsewhere.
"""

from __future__ import annotations

import numpy as np

from engine.sequence import Sequence
from engine.spec_decode.base import Drafts, register_proposer


def ngram_lookup(tokens: np.ndarray, min_n: int, max_n: int, k: int) -> list[int]:
    """Up to k tokens following the most recent earlier match of the longest suffix n-gram (n in [min_n, max_n])."""
    return ngram_match(tokens, min_n, max_n, k)[0]


def ngram_match(tokens: np.ndarray, min_n: int, max_n: int, k: int) -> tuple[list[int], int]:
    """(ngram_lookup's drafts, the n of the suffix that matched; 0 = no match)."""
    length = len(tokens)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        suffix = tokens[length - n:]
        # Windows starting at 0..length-n-1 (the suffix itself excluded); (num_windows, n)
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:length - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n  # most recent match; its continuation starts right after it
            return tokens[start:start + k].tolist(), n
    return [], 0


class NgramProposer:
    name = "ngram"

    def __init__(self, min_n: int = 1, max_n: int = 4):
        self.min_n, self.max_n = min_n, max_n

    def propose(self, seqs: list[Sequence], max_drafts: list[int]) -> Drafts:
        ids = [ngram_lookup(np.asarray(seq.all_ids, dtype=np.int64), self.min_n, self.max_n, k) if k else []
               for seq, k in zip(seqs, max_drafts, strict=True)]
        return Drafts(ids, [None] * len(seqs))

    def on_verified(self, seq: Sequence, num_accepted: int) -> None:
        pass

    def release(self, seq: Sequence) -> None:
        pass


@register_proposer("ngram")
def _make_ngram(ctx) -> NgramProposer:
    return NgramProposer(ctx.settings.speculation.ngram_min, ctx.settings.speculation.ngram_max)
