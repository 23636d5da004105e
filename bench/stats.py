"""Per-request records of a streamed completion and the statistics of a run.

Token timing. A streamed chunk may carry several tokens (a speculative step emits its accepted run at once; a detokenizer
may hold a partial character back). We count tokens per chunk exactly when the server sends per-token logprobs
(`--logprobs`), else we estimate them: the run's `usage.completion_tokens` spread over the chunks in proportion to
their text length (largest remainder, each non-empty chunk >= 1 token when there are enough tokens). Then:

- TTFT: request sent -> first chunk with generated content.
- ITL, per token: a chunk carrying m tokens that arrives g seconds after the previous content chunk contributes m samples
  of g / m. The tokens of the first chunk after the first token contribute samples of 0 (they arrived with it).
  So mean ITL = (e2e_last_chunk - TTFT) / (tokens - 1), the usual TPOT, and percentiles weigh every token equally.
- E2E: request sent -> stream closed.

Percentiles interpolate linearly between order statistics (numpy's default "linear" method).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)


@dataclass
class RequestResult:
    """One request as the client saw it. Times are seconds relative to `start` (a perf_counter reading)."""

    ok: bool
    start: float = 0.0
    error: str | None = None
    chunk_times: list[float] = field(default_factory=list)  # arrival of each content chunk, seconds after start
    chunk_chars: list[int] = field(default_factory=list)  # text length of each content chunk
    chunk_tokens: list[int] | None = None  # exact tokens per chunk (from logprobs), else None
    e2e: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # from usage; None if the server sent none
    speculation: dict[str, int] | None = None  # usage.speculation, when the server reports it

    def tokens_per_chunk(self) -> list[int]:
        if self.chunk_tokens is not None:
            return list(self.chunk_tokens)
        total = self.completion_tokens
        if total is None:
            return [1] * len(self.chunk_times)  # no usage: one token per chunk is all we can say
        return spread(total, self.chunk_chars)

    @property
    def output_tokens(self) -> int:
        if self.chunk_tokens is not None:
            return sum(self.chunk_tokens)
        return self.completion_tokens if self.completion_tokens is not None else len(self.chunk_times)

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] if self.chunk_times else None

    def itl(self) -> list[float]:
        return itl_per_token(self.chunk_times, self.tokens_per_chunk())


def spread(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` tokens over chunks in proportion to `weights` (text lengths), integers summing to `total`.

    Largest-remainder rounding of total * w / sum(w), with each chunk kept at >= 1 token when total allows (a content
    chunk carries at least one token); ties go to the earlier chunk."""
    n = len(weights)
    if n == 0:
        return []
    if total <= n:
        return [1 if i < total else 0 for i in range(n)]
    w = [max(0, x) for x in weights]
    wsum = sum(w)
    ideal = [total * x / wsum for x in w] if wsum else [total / n] * n
    alloc = [max(1, int(math.floor(x))) for x in ideal]
    while sum(alloc) < total:
        i = max(range(n), key=lambda j: (ideal[j] - alloc[j], -j))
        alloc[i] += 1
    while sum(alloc) > total:
        i = max((j for j in range(n) if alloc[j] > 1), key=lambda j: (alloc[j] - ideal[j], j))
        alloc[i] -= 1
    return alloc


def itl_per_token(chunk_times: Sequence[float], chunk_tokens: Sequence[int]) -> list[float]:
    """Inter-token latencies, one per token after the first (see the module docstring)."""
    out: list[float] = []
    prev = None
    for t, m in zip(chunk_times, chunk_tokens, strict=True):
        if m <= 0:
            continue
        if prev is None:
            out.extend([0.0] * (m - 1))
        else:
            out.extend([(t - prev) / m] * m)
        prev = t
    return out


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy.percentile's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * p / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    d: dict[str, float | None] = {f"p{p}": percentile(values, p) for p in PERCENTILES}
    d["mean"] = sum(values) / len(values) if values else None
    return d


def summarize(results: Sequence[RequestResult], duration: float) -> dict[str, Any]:
    """Aggregate one run (one concurrency or rate setting) into the JSON `metrics` object."""
    ok = [r for r in results if r.ok]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or "unknown").split(":")[0][:80]
            errors[key] = errors.get(key, 0) + 1
    out_tokens = sum(r.output_tokens for r in ok)
    itl = [x for r in ok for x in r.itl()]
    spec = [r.speculation for r in ok if r.speculation]
    metrics: dict[str, Any] = {
        "num_requests": len(results),
        "completed": len(ok),
        "errors": len(results) - len(ok),
        "error_kinds": errors,
        "duration_s": duration,
        "request_throughput": len(ok) / duration if duration > 0 else None,
        "output_tokens": out_tokens,
        "output_throughput": out_tokens / duration if duration > 0 else None,
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
        "exact_token_counts": all(r.chunk_tokens is not None for r in ok) if ok else False,
        "ttft_s": distribution([r.ttft for r in ok if r.ttft is not None]),
        "itl_s": distribution(itl),
        "e2e_s": distribution([r.e2e for r in ok if r.e2e is not None]),
        "speculation": None,
    }
    if spec:
        draft = sum(s.get("draft_tokens", 0) for s in spec)
        accepted = sum(s.get("accepted_tokens", 0) for s in spec)
        passes = sum(s.get("target_passes", 0) for s in spec)
        toks = sum(r.output_tokens for r in ok if r.speculation)
        metrics["speculation"] = {
            "draft_tokens": draft,
            "accepted_tokens": accepted,
            "target_passes": passes,
            "acceptance_rate": accepted / draft if draft else None,  # accepted / proposed
            # tokens per target pass (accepted drafts + the target's own token): vLLM's "mean acceptance length"
            "mean_accepted_length": toks / passes if passes else None,
        }
    return metrics


def result_dict(r: RequestResult) -> dict[str, Any]:
    d = asdict(r)
    d["output_tokens"] = r.output_tokens
    return d
