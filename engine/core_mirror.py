"""The API process's view of the engine-core process: admission checks without a model, and counters mirrored from
the core's per-step snapshots so that Prometheus counters carry on (never go backwards) across a core restart."""

from __future__ import annotations

import dataclasses
from collections import Counter

from engine.admission import Admission
from engine.engine import EngineLimits
from engine.ipc import CounterSnapshot, Ready
from engine.sampling.params import RequestLimits
from engine.stats import EngineCounters
from engine.structured.compiler import StructuredStats

_COUNTER_FIELDS = ("accepted_per_pos", "k_chosen", "batch_sizes", "finished")
_INT_FIELDS = ("steps", "prompt_tokens", "generation_tokens", "spec_steps", "draft_tokens", "accepted_tokens",
               "runner_errors", "draft_errors")


def _empty_snapshot() -> CounterSnapshot:
    return CounterSnapshot(0, 0, 0, 0, 0, 0, {}, {}, {}, {}, 0, None, 0, None, {})


class ApiAdmission(Admission):
    """`Admission` in the API process, without a model: every check but the backend's (vocabulary, prompt, context
    length, sampling ranges, grammar compiles) runs here before anything is enqueued; the runner's own (Neuron
    buckets) runs in the core and comes back as a typed error on the stream. `limits` sizes the capacity booking."""

    def __init__(self, ready: Ready, tokenizer, request: RequestLimits):
        from engine.structured.support import StructuredSupport

        structured = StructuredSupport(tokenizer, ready.vocab_size, ready.eos_token_ids)
        super().__init__(ready.vocab_size, ready.max_model_len, structured, request)
        self.limits = EngineLimits(ready.max_num_seqs, ready.max_queue, ready.max_num_batched_tokens,
                                   ready.max_model_len)


class _StructuredView:
    def __init__(self) -> None:
        self.stats = StructuredStats()


class CoreView:
    """`engine.engine` as the metrics read it (`.structured.stats`), mirrored from the core's messages."""

    def __init__(self) -> None:
        self.structured = _StructuredView()


class CounterMirror:
    """`counters` (and `view.structured.stats`) = the totals of dead cores + the live core's latest snapshot."""

    def __init__(self) -> None:
        self.counters = EngineCounters()
        self.view = CoreView()
        self._base = _empty_snapshot()  # dead cores' totals
        self.last = self._base  # the live core's latest snapshot

    def update(self, snap: CounterSnapshot) -> None:
        self.last = snap
        c, base = self.counters, self._base
        for name in _INT_FIELDS:
            setattr(c, name, getattr(base, name) + getattr(snap, name))
        for name in _COUNTER_FIELDS:  # a new object each time: scrapers copy the attribute they read
            setattr(c, name, Counter(getattr(base, name)) + Counter(getattr(snap, name)))
        c.last_runner_error, c.last_draft_error = snap.last_runner_error, snap.last_draft_error
        stats = self.view.structured.stats
        for f in dataclasses.fields(stats):
            total = base.structured.get(f.name, 0) + snap.structured.get(f.name, 0)
            setattr(stats, f.name, type(f.default)(total) if isinstance(f.default, (int, float)) else total)

    def retire(self) -> None:
        """The live core died: fold its totals into the base; the next core starts from zero."""
        self._base = CounterSnapshot(**{f: getattr(self.counters, f) for f in _INT_FIELDS},
                                     **{f: dict(getattr(self.counters, f)) for f in _COUNTER_FIELDS},
                                     last_runner_error=None, last_draft_error=None,
                                     structured={k: self._base.structured.get(k, 0) + v
                                                 for k, v in self.last.structured.items()})
        self.last = _empty_snapshot()
