"""The one validation point: every check a request must pass before it is enqueued, made once per request.

Who calls it: `AsyncEngine.add_request` on the caller's thread (then the engine thread enqueues without checking
again); in the two-process mode the API process runs every check but the backend's (it has no runner) and the core
runs only `check_backend`; `LLMEngine.add_request` (direct use: tests, offline) runs it all. Capacity is booked by
whoever owns the in-flight count (the async bridges), not here.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING

from engine.errors import InvalidRequestError, PromptTooLongError
from engine.sampling.params import RequestLimits, SamplingParams

if TYPE_CHECKING:
    from engine.runners.base import Runner
    from engine.structured.support import StructuredSupport


def request_limits(settings) -> RequestLimits:
    """The per-request bounds the server's settings ask for (each within the hard cap of config.settings)."""
    srv = settings.server
    return RequestLimits(max_n=srv.max_n, max_stop_strings=srv.max_stop_strings, max_logit_bias=srv.max_logit_bias)


class Admission:
    def __init__(self, vocab_size: int, max_model_len: int, structured: StructuredSupport,
                 request: RequestLimits | None = None, runner: Runner | None = None):
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.structured = structured
        self.request = request or RequestLimits()
        self.runner = runner  # None: the backend's own check runs elsewhere (the engine-core process)

    def check(self, prompt_ids: Seq[int], params: SamplingParams) -> None:
        """Raise a typed error (naming the engine's field) if the request cannot be served; nothing is enqueued."""
        params.validate(self.vocab_size, self.request)
        self._check_prompt(prompt_ids, params)
        if self.runner is not None:
            self.check_backend(prompt_ids, params)
        self.structured.check(params)

    def check_backend(self, prompt_ids: Seq[int], params: SamplingParams) -> None:
        """The backend's own limits (largest compiled bucket, fused on-device sampling) are the runner's to state."""
        self.runner.check_request(prompt_ids, params)

    def _check_prompt(self, prompt_ids: Seq[int], params: SamplingParams) -> None:
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty; send at least one token", field="prompt")
        bad = next((t for t in prompt_ids if not (isinstance(t, int) and 0 <= t < self.vocab_size)), None)
        if bad is not None:
            raise InvalidRequestError(
                f"prompt token id {bad!r} is outside the vocabulary (0..{self.vocab_size - 1})", field="prompt")
        limit = self.max_model_len
        n = len(prompt_ids)
        if n >= limit:
            raise PromptTooLongError(
                f"This model's maximum context length is {limit} tokens; the prompt has {n} tokens "
                f"(it must leave room for at least one generated token).", field="prompt")
        if params.max_tokens is not None and n + params.max_tokens > limit:
            raise PromptTooLongError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n + params.max_tokens} tokens ({n} in the prompt, {params.max_tokens} in the completion). "
                f"Reduce the prompt or max_tokens.", field="max_tokens")
