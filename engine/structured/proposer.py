"""Speculation under a grammar: forced tokens as free drafts, model drafts cut at the first token the grammar refuses.

Wraps the configured proposer (draft model, n-gram). Per sequence and step, within the K the policy granted:

- the grammar forces the next tokens (a unique continuation such as `{"name": "`): those tokens are the drafts, at no
  model cost. The target gives them (almost always) all its constrained mass, so they are accepted; they stay lossless
  anyway, verified like any one-hot draft. The wrapped proposer is asked for nothing for that sequence.
- otherwise the wrapped proposer drafts (the draft model samples under the grammar mask, see `DraftModelProposer`);
  drafts past the first grammar-invalid token (n-gram copies) are dropped: the target would reject them for sure.

`Drafts.num_forced` tells the engine how many of this step's drafts were forced (usage.speculation.forced_tokens).
"""

from __future__ import annotations

import torch

from engine.sequence import Sequence
from engine.spec_decode.base import Drafts


class StructuredProposer:
    def __init__(self, inner, vocab_size: int):
        self.inner = inner
        self.vocab_size = vocab_size
        self.name = inner.name

    def propose(self, seqs: list[Sequence], max_drafts: list[int]) -> Drafts:
        forced: dict[int, list[int]] = {}
        for i, (s, k) in enumerate(zip(seqs, max_drafts, strict=True)):
            if s.grammar is not None and k > 0:
                toks = s.grammar.forced_tokens(k)
                if toks:
                    forced[i] = toks
        inner_k = [0 if i in forced else k for i, k in enumerate(max_drafts)]
        inner = self.inner.propose(seqs, inner_k) if any(inner_k) else Drafts.none(len(seqs))
        # One-hot rows only when the wrapped proposer returns distributions: a batch mixes tensors and None never.
        as_tensor = any(p is not None for p in inner.draft_probs)
        ids: list[list[int]] = []
        probs: list[torch.Tensor | None] = []
        num_forced: list[int] = []
        for i, (s, d, p) in enumerate(zip(seqs, inner.token_ids, inner.draft_probs, strict=True)):
            n_forced = 0
            if i in forced:
                d, n_forced = forced[i], len(forced[i])
                p = _one_hot(d, self.vocab_size) if as_tensor else None
            elif s.grammar is not None and d:
                n = s.grammar.valid_prefix(d)
                if n < len(d):
                    d, p = d[:n], (p[:n] if p is not None else None)
            ids.append(d)
            probs.append(p)
            num_forced.append(n_forced)
        return Drafts(ids, probs, num_forced)

    def on_verified(self, seq: Sequence, num_accepted: int) -> None:
        self.inner.on_verified(seq, num_accepted)

    def release(self, seq: Sequence) -> None:
        self.inner.release(seq)


def _one_hot(tokens: list[int], vocab_size: int) -> torch.Tensor:
    """`[len(tokens), V]` float32 rows with all mass on each forced token."""
    rows = torch.zeros(len(tokens), vocab_size, dtype=torch.float32)
    rows[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
    return rows
