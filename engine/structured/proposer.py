"""Speculation under a grammar: forced tokens as free drafts, model drafts cut at the first token the grammar refuses.

Wraps the configured proposer (draft model, n-gram). Per sequence and step, within the K the policy granted:

- the grammar forces the next tokens (a unique continuation such as `{"name": "`): those tokens are the drafts, at no
  model cost. The target gives them (almost always) all its constrained mass, so they are accepted; they stay lossless
  anyway, verified like any one-hot draft. The wrapped proposer is asked for nothing for that sequence.
- otherwise the wrapped proposer drafts (the draft model samples under the grammar mask, see `DraftModelProposer`);
  drafts past the first grammar-invalid token (n-gram copies) are dropped: the target would reject them for sure.

`seq.num_forced_drafts` tells the engine how many of this step's drafts were forced (usage.speculation.forced_tokens).
"""

from __future__ import annotations

import torch

from engine.sequence import Sequence


class StructuredProposer:
    def __init__(self, inner, vocab_size: int):
        self.inner = inner
        self.vocab_size = vocab_size
        self.name = inner.name

    def propose(self, seqs: list[Sequence], max_drafts: list[int]) -> list[torch.Tensor | None]:
        forced: dict[int, list[int]] = {}
        for i, (s, k) in enumerate(zip(seqs, max_drafts, strict=True)):
            s.num_forced_drafts = 0
            if s.grammar is not None and k > 0:
                toks = s.grammar.forced_tokens(k)
                if toks:
                    forced[i] = toks
        inner_k = [0 if i in forced else k for i, k in enumerate(max_drafts)]
        probs = self.inner.propose(seqs, inner_k) if any(inner_k) else [None] * len(seqs)
        if not any(inner_k):
            for s in seqs:
                s.draft_ids = []
        # One-hot rows only when the wrapped proposer returns distributions: a batch mixes tensors and None never.
        as_tensor = any(p is not None for p in probs)
        out: list[torch.Tensor | None] = []
        for i, (s, p) in enumerate(zip(seqs, probs, strict=True)):
            if i in forced:
                s.draft_ids = forced[i]
                s.num_forced_drafts = len(forced[i])
                p = _one_hot(forced[i], self.vocab_size) if as_tensor else None
            elif s.grammar is not None and s.draft_ids:
                n = s.grammar.valid_prefix(s.draft_ids)
                if n < len(s.draft_ids):
                    s.draft_ids = s.draft_ids[:n]
                    p = p[:n] if p is not None else None
            out.append(p)
        return out

    def on_verified(self, seq: Sequence, num_accepted: int) -> None:
        self.inner.on_verified(seq, num_accepted)

    def release(self, seq: Sequence) -> None:
        self.inner.release(seq)


def _one_hot(tokens: list[int], vocab_size: int) -> torch.Tensor:
    """`[len(tokens), V]` float32 rows with all mass on each forced token."""
    rows = torch.zeros(len(tokens), vocab_size, dtype=torch.float32)
    rows[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
    return rows
