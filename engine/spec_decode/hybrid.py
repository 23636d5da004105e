"""Hybrid proposer: prompt lookup where the history repeats itself, the draft model everywhere else.

The two proposers win in different places. n-gram lookup costs nothing and is accepted in long runs where the answer
copies its context (code edits, extraction, quoting), and proposes nothing or noise elsewhere; a small draft model
costs a pass per draft token and is accepted at its own, steadier rate. Per sequence and step: when the last
`min_match` or more tokens occurred earlier in prompt + output, the tokens that followed are the drafts (one-hot, no
model pass); otherwise the draft model proposes. A single-token suffix match is weak evidence (in prose most tokens
recur), so `min_match` defaults to 2.

Both kinds of draft go through the same rejection sampler (one-hot rows with `draft_probs` None), so the output is
the target's either way. The draft model's cache simply falls behind on n-gram steps and catches up (bounded, see
draft_model.py) on the next step it drafts.
"""

from __future__ import annotations

import numpy as np

from engine.sequence import Sequence
from engine.spec_decode.base import Drafts, register_proposer
from engine.spec_decode.draft_model import DraftModelProposer
from engine.spec_decode.ngram import ngram_match


class HybridProposer:
    name = "hybrid"

    def __init__(self, draft: DraftModelProposer, min_match: int = 2, max_n: int = 4):
        if not 1 <= min_match <= max_n:
            raise ValueError(f"need 1 <= min_match <= max_n, got {min_match}, {max_n}")
        self.draft = draft
        self.min_match, self.max_n = min_match, max_n
        self.ngram_drafted = 0  # sequences-steps served by lookup / by the draft model (for logs and tests)
        self.model_drafted = 0

    def propose(self, seqs: list[Sequence], max_drafts: list[int]) -> Drafts:
        tokens: list[list[int]] = [[] for _ in seqs]
        probs: list = [None] * len(seqs)
        rest: list[int] = []  # indices the draft model proposes for
        for i, (seq, k) in enumerate(zip(seqs, max_drafts, strict=True)):
            if k <= 0:
                continue
            found, _ = ngram_match(np.asarray(seq.all_ids, dtype=np.int64), self.min_match, self.max_n, k)
            if found:
                tokens[i] = found
                self.ngram_drafted += 1
            else:
                rest.append(i)
        if rest:
            sub = self.draft.propose([seqs[i] for i in rest], [max_drafts[i] for i in rest])
            for i, t, p in zip(rest, sub.token_ids, sub.draft_probs, strict=True):
                tokens[i], probs[i] = t, p
            self.model_drafted += len(rest)
        return Drafts(tokens, probs)

    def on_verified(self, seq: Sequence, num_accepted: int) -> None:
        # After an n-gram step the draft cache is at most at num_tokens: the roll-back is then a no-op.
        self.draft.on_verified(seq, num_accepted)

    def release(self, seq: Sequence) -> None:
        self.draft.release(seq)


@register_proposer("hybrid")
def _make_hybrid(ctx) -> HybridProposer:
    s = ctx.settings.speculation
    draft = DraftModelProposer(ctx.build_draft_runner(), catch_up_budget=ctx.settings.engine.max_num_batched_tokens)
    return HybridProposer(draft, min_match=min(s.hybrid_min_match, s.ngram_max), max_n=s.ngram_max)
