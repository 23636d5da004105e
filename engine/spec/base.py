"""The proposer protocol and the registry that maps a method name to its implementation (no if/elif dispatch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from engine.sequence import Sequence


class Proposer(Protocol):
    """Proposes draft tokens for decoding sequences; the target verifies them in one pass."""

    name: str

    def propose(self, seqs: list[Sequence], max_drafts: list[int]) -> list[torch.Tensor | None]:
        """Set `seq.draft_ids` (at most `max_drafts[i]` tokens, possibly none) for each sequence.

        Returns, per sequence, the processed draft distribution `[len(seq.draft_ids), V]` the drafts were sampled from,
        or None when the drafts are deterministic (one-hot, e.g. n-gram lookup).
        """
        ...

    def on_verified(self, seq: Sequence, num_accepted: int) -> None:
        """The target accepted `num_accepted` of the sequence's drafts; roll back proposer state past them."""

    def release(self, seq: Sequence) -> None:
        """The sequence finished or was aborted."""


# name -> factory(context) -> Proposer; context carries what a factory may need (target runner, draft path, settings).
PROPOSERS: dict[str, Callable[..., Proposer]] = {}


def register_proposer(name: str):
    def deco(factory: Callable[..., Proposer]):
        PROPOSERS[name] = factory
        return factory

    return deco
