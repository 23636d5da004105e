"""Build engines on tiny models for tests and run requests to completion."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from config.loader import load_settings
from engine.builder import build_engine
from engine.engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling.params import SamplingParams


def make_engine(target: Path, *, method: str = "none", draft: Path | None = None, **settings) -> LLMEngine:
    cli = {"model": str(target), "speculative_method": method, "dtype": "float32", "device": "cpu", **settings}
    if draft is not None:
        cli["draft_model"] = str(draft)
    engine, _ = build_engine(load_settings(cli, environ={}))
    return engine


def run_all(engine: LLMEngine, max_steps: int = 10_000) -> dict[str, list[RequestOutput]]:
    """Step until idle; outputs grouped by request id."""
    outs: dict[str, list[RequestOutput]] = defaultdict(list)
    for _ in range(max_steps):
        if not engine.has_work():
            break
        for o in engine.step():
            outs[o.request_id].append(o)
    else:
        raise AssertionError("engine did not go idle")
    return dict(outs)


def tokens_of(outs: list[RequestOutput], index: int = 0) -> list[int]:
    return [t for o in outs if o.index == index for t in o.token_ids]


def text_of(outs: list[RequestOutput], index: int = 0) -> str:
    return "".join(o.text for o in outs if o.index == index)


def final(outs: list[RequestOutput], index: int = 0) -> RequestOutput:
    done = [o for o in outs if o.index == index and o.finished]
    assert len(done) == 1, f"choice {index} finished {len(done)} times"
    return done[0]


def greedy(max_tokens: int = 16, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)
