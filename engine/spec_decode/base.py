"""The proposer protocol, its typed result (`Drafts`), and the registry that maps a method name to its implementation
(no if/elif dispatch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from engine.sequence import Sequence


class Draft(NamedTuple):
    """One sequence's drafts for this step."""

    token_ids: list[int]
    draft_probs: torch.Tensor | None  # [len(token_ids), V] the distribution they were sampled from; None = one-hot
    num_forced: int = 0  # leading drafts a grammar forced (structured output): free, and no evidence of acceptance


NO_DRAFT = Draft([], None)


@dataclass
class Drafts:
    """A proposer's answer, parallel to the sequences it was asked about. Values only: nothing is written on the
    sequences, so the drafts of a step live exactly as long as the step."""

    token_ids: list[list[int]]  # per sequence, at most max_drafts[i] tokens (possibly none)
    draft_probs: list[torch.Tensor | None]  # per sequence, [len(token_ids[i]), V], or None (deterministic drafts)
    num_forced: list[int] | None = None  # per sequence, see Draft.num_forced; None = none forced

    def __post_init__(self) -> None:
        if len(self.draft_probs) != len(self.token_ids) or (
                self.num_forced is not None and len(self.num_forced) != len(self.token_ids)):
            raise ValueError("Drafts lists must have one entry per sequence")

    @classmethod
    def none(cls, n: int) -> Drafts:
        return cls([[] for _ in range(n)], [None] * n)

    def __len__(self) -> int:
        return len(self.token_ids)

    def __iter__(self) -> Iterator[Draft]:
        forced = self.num_forced or [0] * len(self.token_ids)
        return (Draft(t, p, f) for t, p, f in zip(self.token_ids, self.draft_probs, forced, strict=True))


class Proposer(Protocol):
    """Proposes draft tokens for decoding sequences; the target verifies them in one pass."""

    name: str

    def propose(self, seqs: list[Sequence], max_drafts: list[int]) -> Drafts:
        """At most `max_drafts[i]` draft tokens for each sequence, with the processed draft distribution they were
        sampled from (or None when they are deterministic: one-hot, e.g. n-gram lookup)."""
        ...

    def on_verified(self, seq: Sequence, num_accepted: int) -> None:
        """The target accepted `num_accepted` of the sequence's drafts; roll back proposer state past them."""

    def release(self, seq: Sequence) -> None:
        """The sequence finished or was aborted."""


# name -> factory(context) -> Proposer, or None for "none"; the context (engine.builder.BuildContext) carries what a
# factory may need: settings, the target runner, a builder for the draft model's runner.
PROPOSERS: dict[str, Callable[..., Proposer | None]] = {}


def register_proposer(name: str):
    def deco(factory: Callable[..., Proposer]):
        PROPOSERS[name] = factory
        return factory

    return deco


@register_proposer("none")
def _no_proposer(ctx) -> None:
    return None
