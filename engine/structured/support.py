"""The engine's handle on structured output: the few calls `LLMEngine` makes, so its own code stays a line each."""

from __future__ import annotations

import logging
from collections.abc import Sequence as Seq

from engine.sampling.params import SamplingParams
from engine.sequence import Sequence
from engine.structured.compiler import GrammarCompiler
from engine.structured.proposer import StructuredProposer
from engine.structured.state import GrammarError

log = logging.getLogger("specserve.structured")

FORCED_K_MAX = 8


class StructuredSupport:
    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Seq[int] = (),
                 allowed_k: Seq[int] | None = None):
        self.vocab_size = vocab_size
        # The longest forced run proposed in one step; a runner with compiled draft lengths caps it at its largest.
        self.forced_k_max = min(FORCED_K_MAX, max(allowed_k)) if allowed_k else FORCED_K_MAX
        self.compiler = GrammarCompiler(tokenizer, vocab_size, sorted(eos_token_ids))
        if _is_fast_tokenizer(tokenizer):  # test doubles and slow tokenizers: built (or refused) on first use
            self.compiler.warm()

    @property
    def stats(self):
        return self.compiler.stats

    def wrap_proposer(self, proposer):
        """Every proposer drafts through the grammar (forced tokens, invalid drafts cut); None stays None."""
        return None if proposer is None else StructuredProposer(proposer, self.vocab_size)

    def forced_k(self, seqs: list[Sequence], ks: list[int]) -> list[int]:
        """Raise each constrained sequence's K to cover the tokens its grammar forces next (at most FORCED_K_MAX, or
        the runner's largest allowed K), even where the policy chose less: forced drafts cost no draft-model run and
        are accepted, so they pay at any load. The scheduler still clamps K to the token budget and the slot."""
        out = list(ks)
        for i, seq in enumerate(seqs):
            if seq.grammar is not None and seq.params.speculative:
                out[i] = max(out[i], len(seq.grammar.forced_tokens(self.forced_k_max)))
        return out

    def check(self, params: SamplingParams) -> None:
        """Compile (and cache) the request's grammar now, so a schema it cannot enforce is a 400 before enqueueing."""
        if params.structured is not None:
            self.compiler.compile(params.structured)

    def attach(self, seq: Sequence) -> None:
        """Give a new choice its own matcher (the grammar itself is compiled once and shared)."""
        if seq.params.structured is None:
            return
        if seq.index == 0:
            self.stats.constrained_requests += 1
        seq.grammar = self.compiler.new_state(seq.params.structured)

    def on_emitted(self, seq: Sequence, token_ids: list[int], num_accepted: int, num_forced: int) -> str | None:
        """Advance the matcher over the emitted tokens (drafts it tried are rolled back first); count the forced
        drafts (`num_forced` of this step's) that were accepted. Returns an error message if a token breaks the
        grammar (it cannot, by masking)."""
        forced = min(num_forced, num_accepted)
        seq.spec.forced_tokens += forced
        self.stats.forced_tokens += forced
        try:
            seq.grammar.commit(token_ids)
        except GrammarError as e:
            log.error("sequence %s left its grammar: %s", seq.seq_id, e)
            return f"structured output failed: {e}"
        return None


def _is_fast_tokenizer(tokenizer) -> bool:
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        return False
    return isinstance(tokenizer, PreTrainedTokenizerFast)
