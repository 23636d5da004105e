"""Per-request sampling parameters, validated once at the engine's edge (`engine.admission.Admission`).

Semantics follow OpenAI's API, with vLLM's extensions (`top_k`, `min_p`, `repetition_penalty`, `min_tokens`,
`ignore_eos`) and specserve's `speculative` switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from config.settings import MAX_LOGIT_BIAS, MAX_N, MAX_STOP_STRINGS, MAX_TOP_LOGPROBS
from engine.errors import InvalidRequestError

if TYPE_CHECKING:
    from engine.structured.spec import GrammarSpec


@dataclass(frozen=True)
class RequestLimits:
    """Per-request bounds: the hard caps of config.settings, lowered by the server's settings (`max_n`, ...)."""

    max_n: int = MAX_N
    max_stop_strings: int = MAX_STOP_STRINGS
    max_logit_bias: int = MAX_LOGIT_BIAS
    max_top_logprobs: int = MAX_TOP_LOGPROBS


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int | None = 16  # None: up to max_model_len
    min_tokens: int = 0
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages tokens seen in prompt or output (CTRL / HF semantics)
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; k >= 0: the sampled token's logprob plus the top k
    speculative: bool = True  # False: this request never gets draft tokens
    structured: GrammarSpec | None = None  # output constrained to this grammar (JSON schema, any JSON object, ...)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def validate(self, vocab_size: int, limits: RequestLimits = RequestLimits()) -> None:  # noqa: B008 (frozen)
        """Raise InvalidRequestError naming the field (this class's attribute name) for any out-of-range value."""

        def bad(msg: str, field: str) -> None:
            raise InvalidRequestError(msg, field=field)

        def finite(x: float, name: str) -> None:
            if not isinstance(x, (int, float)) or math.isnan(x) or math.isinf(x):
                bad(f"{name} must be a finite number, got {x!r}", name)

        if self.n < 1:
            bad(f"n must be at least 1, got {self.n}", "n")
        if self.n > limits.max_n:
            bad(f"n must be at most {limits.max_n} on this server, got {self.n}", "n")
        if self.max_tokens is not None and self.max_tokens < 1:
            bad(f"max_tokens must be at least 1, got {self.max_tokens}", "max_tokens")
        if self.min_tokens < 0:
            bad(f"min_tokens must be >= 0, got {self.min_tokens}", "min_tokens")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            bad(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})", "min_tokens")
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            finite(getattr(self, name), name)
        if not 0.0 <= self.temperature <= 2.0:
            bad(f"temperature must be between 0 and 2, got {self.temperature}", "temperature")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.top_k < -1:
            bad(f"top_k must be -1, 0 (off) or positive, got {self.top_k}", "top_k")
        if not 0.0 <= self.min_p <= 1.0:
            bad(f"min_p must be in [0, 1], got {self.min_p}", "min_p")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                bad(f"{name} must be between -2 and 2, got {getattr(self, name)}", name)
        if not 0.0 < self.repetition_penalty <= 10.0:
            bad(f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}", "repetition_penalty")
        if len(self.logit_bias) > limits.max_logit_bias:
            bad(f"logit_bias may have at most {limits.max_logit_bias} entries, got {len(self.logit_bias)}",
                "logit_bias")
        for tok, bias in self.logit_bias.items():
            if not isinstance(tok, int) or not 0 <= tok < vocab_size:
                bad(f"logit_bias token id {tok!r} is not in the vocabulary (0..{vocab_size - 1})", "logit_bias")
            finite(bias, "logit_bias")
            if not -100.0 <= bias <= 100.0:
                bad(f"logit_bias values must be between -100 and 100, got {bias} for token {tok}", "logit_bias")
        for tok in self.stop_token_ids:
            if not 0 <= tok < vocab_size:
                bad(f"stop_token_ids entry {tok} is not in the vocabulary (0..{vocab_size - 1})", "stop_token_ids")
        if len(self.stop) > limits.max_stop_strings:
            bad(f"at most {limits.max_stop_strings} stop sequences are allowed, got {len(self.stop)}", "stop")
        if any(not s for s in self.stop):
            bad("stop sequences must be non-empty strings", "stop")
        if self.logprobs is not None and not 0 <= self.logprobs <= limits.max_top_logprobs:
            bad(f"the number of top logprobs must be between 0 and {limits.max_top_logprobs}, got {self.logprobs}",
                "logprobs")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            bad("seed must fit in a signed 64-bit integer", "seed")
