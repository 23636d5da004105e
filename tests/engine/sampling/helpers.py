"""Small factories shared by the sampling tests."""

from __future__ import annotations

from engine.sampling.params import SamplingParams
from engine.sampling.pipeline import RowContext


def row(prompt=(), output=(), stop=(), **params) -> RowContext:
    return RowContext(
        params=SamplingParams(**params),
        prompt_ids=list(prompt),
        output_ids=list(output),
        stop_token_ids=list(stop),
    )
