"""One sequence's grammar state: the matcher advanced over the committed (emitted) tokens, plus tentative drafts.

Speculation walks the matcher forward over draft tokens that may be rejected. The matcher holds
`committed + tentative` tokens; `_sync(drafts)` rolls back to the longest common prefix of `tentative` and `drafts`
and consumes the rest, so a draft proposer asking for the mask after drafts[:1], drafts[:2], ... and then the verify
step asking for all k+1 masks cost one consume per token. `commit(tokens)` rolls every tentative token back (the
rejected drafts' grammar state is undone) and consumes what the rejection sampler emitted.

llguidance never raises on a bad token: the matcher enters a permanent error state. Draft tokens are therefore
validated (`validate_tokens`, which does not advance the matcher) before they are consumed.
"""

from __future__ import annotations

import torch

from engine.structured.masking import unpack_bitmask


class GrammarError(RuntimeError):
    """An emitted token the grammar does not allow (a bug: emitted tokens were sampled under the grammar's mask)."""


class GrammarState:
    def __init__(self, matcher, vocab_size: int, executor=None):
        self._m = matcher  # llguidance.LLMatcher
        self.executor = executor  # llguidance.LLExecutor shared by the compiler's states (engine.structured.batch)
        self.vocab_size = vocab_size
        self._tentative: list[int] = []  # draft tokens consumed on top of the committed ones
        self.num_committed = 0
        # Masks by draft prefix since the last commit: the draft proposer's mask for draft j is the verify step's
        # mask for row j, so each is computed once per step.
        self._masks: dict[tuple[int, ...], torch.Tensor | None] = {}
        self._forced: list[int] | None = None  # forced continuation of the committed tokens, until the next commit

    # -- queries ---------------------------------------------------------------------------------------------------

    def allowed_after(self, drafts: list[int]) -> torch.Tensor | None:
        """`[V]` bool: tokens the grammar allows after committed + `drafts`.

        A finished grammar allows only EOS. None when no constraint applies: `drafts` is not a valid continuation (its
        row follows a draft the target rejects for sure, since the target gives that draft zero mass) or nothing at
        all is allowed (an empty row would turn into NaN probabilities).
        """
        key = tuple(drafts)
        if key in self._masks:
            return self._masks[key]
        allowed = None
        if self._sync(drafts):
            packed = torch.frombuffer(bytearray(self._m.compute_bitmask()), dtype=torch.int32)  # (W,)
            allowed = unpack_bitmask(packed.view(1, -1), self.vocab_size)[0]  # (V,) bool
            if not bool(allowed.any()):
                allowed = None
        self._masks[key] = allowed
        return allowed

    def has_masks_for(self, drafts: list[int]) -> bool:
        return all(tuple(drafts[:j]) in self._masks for j in range(len(drafts) + 1))

    def store_masks(self, drafts: list[int], rows: list[torch.Tensor | None]) -> None:
        """Masks computed elsewhere (engine.structured.batch) for the rows of `drafts`."""
        for j, row in enumerate(rows):
            self._masks.setdefault(tuple(drafts[:j]), row)

    def committed_matcher(self):
        """The matcher holding the committed tokens only (tentative drafts rolled back), for batched mask calls."""
        self._sync([])
        return self._m

    def masks_for(self, drafts: list[int]) -> list[torch.Tensor | None]:
        """The k+1 allowed-token rows of a verify block: row j after drafts[:j]."""
        return [self.allowed_after(drafts[:j]) for j in range(len(drafts) + 1)]

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many leading `tokens` the grammar accepts after the committed tokens (the matcher does not move)."""
        self._sync([])
        return self._m.validate_tokens(tokens) if tokens else 0

    def forced_tokens(self, limit: int) -> list[int]:
        """Up to `limit` tokens the grammar forces next (a unique continuation, e.g. `{"name": "`)."""
        if limit <= 0:
            return []
        if self._forced is None:
            self._sync([])
            self._forced = [] if self._m.is_stopped() else list(self._m.compute_ff_tokens())
        return self._forced[:limit]

    @property
    def is_finished(self) -> bool:
        self._sync([])
        return self._m.is_stopped()

    @property
    def is_accepting(self) -> bool:
        self._sync([])
        return self._m.is_accepting()

    # -- updates ---------------------------------------------------------------------------------------------------

    def commit(self, tokens: list[int]) -> None:
        """Roll back every tentative draft, then advance over the emitted `tokens`."""
        self._masks.clear()
        self._forced = None
        self._sync([])
        if self._m.is_stopped():
            return  # tokens past the grammar's end (e.g. ignore_eos); nothing left to constrain
        n = self._m.validate_tokens(tokens) if tokens else 0
        if n and not self._m.consume_tokens(tokens[:n]):
            raise GrammarError(self._m.get_error())
        self.num_committed += n
        # Tokens after the grammar's end (a bonus token drawn past an accepted EOS draft) are cut by the engine's
        # stop check; anything else the grammar refuses is a bug.
        if n < len(tokens) and not self._m.is_stopped():
            raise GrammarError(f"token {tokens[n]} is not allowed by the grammar here")

    def reset_drafts(self) -> None:
        self._sync([])

    def _sync(self, drafts: list[int]) -> bool:
        """Make the matcher hold committed + `drafts`; False (holding the longest valid prefix) if they are invalid."""
        common = 0
        for a, b in zip(self._tentative, drafts, strict=False):  # lengths differ by design
            if a != b:
                break
            common += 1
        if common < len(self._tentative):
            self._m.rollback(len(self._tentative) - common)
            del self._tentative[common:]
        rest = drafts[common:]
        if not rest:
            return True
        if self._m.is_stopped():
            return False
        n = self._m.validate_tokens(rest)
        if n and self._m.consume_tokens(rest[:n]):
            self._tentative.extend(rest[:n])
        return n == len(rest)
