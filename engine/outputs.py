"""What the engine hands back to its caller, one object per step per choice that produced something."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TopLogprob:
    token_id: int
    logprob: float


@dataclass
class TokenLogprob:
    """Logprob of one generated token under the target model, with the `top` most likely alternatives."""

    token_id: int
    logprob: float
    top: list[TopLogprob] = field(default_factory=list)


@dataclass
class SpecStats:
    """Per-request speculation counters (also the response's `usage.speculation`)."""

    draft_tokens: int = 0  # draft tokens proposed and verified for this request
    accepted_tokens: int = 0  # of those, accepted by the rejection sampler
    target_passes: int = 0  # target forward passes that produced output for this request (decode or verify)
    forced_tokens: int = 0  # accepted drafts that the grammar forced (free: no draft model ran for them)

    def as_dict(self) -> dict[str, int]:
        return {
            "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted_tokens,
            "target_passes": self.target_passes,
            "forced_tokens": self.forced_tokens,
        }


@dataclass
class RequestOutput:
    """Delta for one choice of one request.

    `token_ids`/`text`/`logprobs` hold only what is new since the previous output of this choice. A speculative step can
    deliver several tokens at once; `token_times` gives one engine timestamp (time.monotonic) per new token so latency
    metrics can be per token. The last output of a choice has `finished=True` and a `finish_reason` ("stop", "length",
    "abort" or "error").
    """

    request_id: str
    index: int  # choice index, 0..n-1
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # the stop string or token id that ended the choice, if any
    error: str | None = None  # set with finish_reason == "error"
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0  # cumulative, this choice
    token_times: list[float] = field(default_factory=list)
    spec: SpecStats = field(default_factory=SpecStats)  # cumulative, this choice
    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None


def merge_outputs(earlier: RequestOutput, later: RequestOutput) -> RequestOutput:
    """One delta for two consecutive deltas of the same choice (`later` came right after `earlier`).

    The new-since-last fields concatenate; the cumulative and final ones (counts, spec stats, finish) are `later`'s;
    the per-request times that are set once keep `earlier`'s."""
    if earlier.logprobs is None and later.logprobs is None:
        logprobs = None
    else:
        logprobs = (earlier.logprobs or []) + (later.logprobs or [])
    return RequestOutput(
        request_id=later.request_id, index=later.index,
        token_ids=earlier.token_ids + later.token_ids, text=earlier.text + later.text, logprobs=logprobs,
        finished=later.finished, finish_reason=later.finish_reason, stop_reason=later.stop_reason, error=later.error,
        num_prompt_tokens=later.num_prompt_tokens, num_output_tokens=later.num_output_tokens,
        token_times=earlier.token_times + later.token_times, spec=later.spec,
        arrival_time=earlier.arrival_time or later.arrival_time,
        first_scheduled_time=earlier.first_scheduled_time if earlier.first_scheduled_time is not None
        else later.first_scheduled_time,
        first_token_time=earlier.first_token_time if earlier.first_token_time is not None else later.first_token_time,
    )
