"""Structured output: grammars (JSON schema, any JSON object) enforced on the token distribution, speculation on.

- `spec.GrammarSpec`: what a request asks for (a value on `SamplingParams.structured`).
- `compiler.GrammarCompiler`: the tokenizer-bound grammar engine (llguidance), compiles each spec once and caches it.
- `state.GrammarState`: one matcher per sequence: committed tokens, tentative draft tokens, masks, forced tokens.
- `masking`: llguidance's packed bitmask -> a boolean allowed-token row, applied inside the logits pipeline.
- `proposer.StructuredProposer`: wraps any proposer; forced tokens become free drafts, invalid drafts are cut.

Why this is lossless under speculation: the logits pipeline masks row j of a verify block with the grammar state
reached after drafts[:j] (draft rows likewise), so the rejection sampler compares the *constrained* draft and target
distributions, and accepted-or-recovered tokens follow the constrained target distribution exactly.
"""

from engine.structured.compiler import GrammarCompiler
from engine.structured.spec import GrammarSpec
from engine.structured.state import GrammarState

__all__ = ["GrammarCompiler", "GrammarSpec", "GrammarState"]
