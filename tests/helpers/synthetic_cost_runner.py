"""A runner pair whose step time follows a given cost model on a fake clock: the policy meets a device's economics
(accelerator-like or CPU-like) in the real engine, deterministically and fast.

The target is a fixed function: after token t at position p it predicts (31 t + 17 (p + 1) + 7) mod V (one-hot
logits), so greedy output needs no weights. The draft agrees with it with probability `acceptance` per position
(decided by a hash of token and position, so the same history gets the same draft) and otherwise proposes the next
token. Every `execute` advances the shared `FakeClock` by `cost(rows, tokens)`; patching the engine's `time` with
`fake_time(clock)` makes the engine's step timing read it.
"""

from __future__ import annotations

import types
import zlib
from collections.abc import Callable

import torch

from engine.engine import EngineLimits, LLMEngine
from engine.runners.base import ForwardBatch, Runner, RunnerInfo
from engine.spec_decode.draft_model import DraftModelProposer

V = 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_time(clock: FakeClock) -> types.SimpleNamespace:
    return types.SimpleNamespace(perf_counter=clock, monotonic=clock, time=clock)


def true_next(tok: int, pos: int) -> int:
    return (31 * tok + 17 * (pos + 1) + 7) % V


class SyntheticRunner(Runner):
    """`cost(rows, tokens) -> seconds` for one call; `acceptance` None = the target, else a draft that agrees with
    the target with that probability."""

    def __init__(self, clock: FakeClock, cost: Callable[[int, int], float], acceptance: float | None = None,
                 slots: int = 64, max_len: int = 4096):
        self.clock, self.cost, self.acceptance = clock, cost, acceptance
        self._info = RunnerInfo(vocab_size=V, max_slots=slots, max_model_len=max_len)

    def info(self) -> RunnerInfo:
        return self._info

    def warmup(self) -> None:
        pass

    def release_slot(self, slot: int) -> None:
        pass

    def _next(self, tok: int, pos: int) -> int:
        nxt = true_next(tok, pos)
        if self.acceptance is None:
            return nxt
        u = zlib.crc32(f"{tok},{pos}".encode()) / 2**32
        return nxt if u < self.acceptance else (nxt + 1) % V

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        self.clock.now += self.cost(batch.num_rows, batch.num_tokens)
        ids = []
        for toks, start, n in zip(batch.token_ids, batch.start_pos, batch.num_logits, strict=True):
            for j in range(len(toks) - n, len(toks)):
                ids.append(self._next(toks[j], start + j))
        logits = torch.full((len(ids), V), -30.0)
        logits[torch.arange(len(ids)), torch.tensor(ids, dtype=torch.long)] = 30.0  # (total_logits, V)
        return logits


class CharTokenizer:
    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + i % 26) for i in ids)


def synthetic_engine(clock: FakeClock, target_cost: Callable[[int, int], float],
                     draft_cost: Callable[[int, int], float], acceptance: float, policy,
                     max_num_seqs: int = 64) -> tuple[LLMEngine, SyntheticRunner]:
    """An engine on the synthetic pair with the draft-model proposer; returns it and the draft runner (whose
    `acceptance` a test may change mid-run)."""
    target = SyntheticRunner(clock, target_cost, slots=max_num_seqs)
    draft = SyntheticRunner(clock, draft_cost, acceptance=acceptance, slots=max_num_seqs)
    limits = EngineLimits(max_num_seqs=max_num_seqs, max_queue=1024, max_num_batched_tokens=max_num_seqs * 8,
                          max_model_len=4096)
    eng = LLMEngine(target, CharTokenizer(), limits, proposer=DraftModelProposer(draft), policy=policy)
    return eng, draft
