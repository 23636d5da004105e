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


class StructuredSupport:
    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Seq[int] = ()):
        self.vocab_size = vocab_size
        self.compiler = GrammarCompiler(tokenizer, vocab_size, sorted(eos_token_ids))
        if _is_fast_tokenizer(tokenizer):  # test doubles and slow tokenizers: built (or refused) on first use
            self.compiler.warm()

    @property
    def stats(self):
        return self.compiler.stats

    def wrap_proposer(self, proposer):
        """Every proposer drafts through the grammar (forced tokens, invalid drafts cut); None stays None."""
        return None if proposer is None else StructuredProposer(proposer, self.vocab_size)

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

    def on_emitted(self, seq: Sequence, token_ids: list[int], num_accepted: int) -> str | None:
        """Advance the matcher over the emitted tokens (drafts it tried are rolled back first); count the forced
        drafts that were accepted. Returns an error message if a token breaks the grammar (it cannot, by masking)."""
        forced = min(seq.num_forced_drafts, num_accepted)
        seq.spec.forced_tokens += forced
        self.stats.forced_tokens += forced
        seq.num_forced_drafts = 0
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
