"""Deltas that queue up while the API side is busy reach the client as one merged delta (server.serving_common
EngineRun, engine.outputs.merge_outputs): nothing is lost, reordered within a choice or merged past a finish."""

from __future__ import annotations

import asyncio
import dataclasses

from engine.outputs import RequestOutput, SpecStats, TokenLogprob, TopLogprob, merge_outputs
from server.serving_common import EngineRun, _ClientLeft, _coalesce, _Output, _StreamEnded


def _out(choice: int, tok: int, *, finished: bool = False, n_out: int = 0, logprob: bool = False,
         rid: str = "r") -> RequestOutput:
    return RequestOutput(
        request_id=rid, index=choice, token_ids=[tok], text=f"<{tok}>",
        logprobs=[TokenLogprob(tok, -0.1 * tok, [TopLogprob(tok, -0.1 * tok)])] if logprob else None,
        finished=finished, finish_reason="length" if finished else None, num_prompt_tokens=7,
        num_output_tokens=n_out, token_times=[float(tok)], spec=SpecStats(draft_tokens=n_out, accepted_tokens=n_out),
        arrival_time=1.0, first_scheduled_time=2.0 if tok == 0 else None, first_token_time=3.0 if tok == 0 else None)


def test_merge_keeps_every_field_of_both_deltas():
    a = _out(0, 0, n_out=1, logprob=True)
    b = _out(0, 1, finished=True, n_out=2, logprob=True)
    m = merge_outputs(a, b)
    assert m.token_ids == [0, 1] and m.text == "<0><1>" and m.token_times == [0.0, 1.0]
    assert [lp.token_id for lp in m.logprobs] == [0, 1]
    assert m.finished and m.finish_reason == "length"
    assert m.num_output_tokens == 2 and m.spec.draft_tokens == 2  # cumulative: the later delta's
    assert (m.arrival_time, m.first_scheduled_time, m.first_token_time) == (1.0, 2.0, 3.0)  # set once: the earlier's
    # A field added to RequestOutput later must be handled here too: this lists the ones merge_outputs knows.
    assert {f.name for f in dataclasses.fields(RequestOutput)} == {
        "request_id", "index", "token_ids", "text", "logprobs", "finished", "finish_reason", "stop_reason", "error",
        "num_prompt_tokens", "num_output_tokens", "token_times", "spec", "arrival_time", "first_scheduled_time",
        "first_token_time"}


def test_merge_with_logprobs_on_one_side_only_keeps_them():
    m = merge_outputs(_out(0, 0), _out(0, 1, logprob=True))
    assert [lp.token_id for lp in m.logprobs] == [1]
    assert merge_outputs(_out(0, 0), _out(0, 1)).logprobs is None


def test_coalesce_merges_per_choice_and_stops_at_other_events_and_finishes():
    events = [_Output(0, _out(0, 0)), _Output(0, _out(1, 10)), _Output(0, _out(0, 1)),
              _Output(0, _out(0, 2, finished=True)), _Output(0, _out(1, 11)),
              _StreamEnded(1), _Output(0, _out(1, 12)), _ClientLeft(), _Output(0, _out(1, 13))]
    got = _coalesce(events)
    shapes = [(type(e).__name__, getattr(e, "output", None) and (e.output.index, e.output.token_ids)) for e in got]
    assert shapes == [
        ("_Output", (0, [0, 1, 2])),  # choice 0 merged up to and including its finish
        ("_Output", (1, [10, 11])),
        ("_StreamEnded", None),
        ("_Output", (1, [12])),  # not merged across the end of another stream
        ("_ClientLeft", None),
        ("_Output", (1, [13])),
    ]
    assert got[0].output.finished
    # Outputs of different streams with the same choice index stay apart.
    two = _coalesce([_Output(0, _out(0, 0)), _Output(1, _out(0, 5)), _Output(0, _out(0, 1))])
    assert [(e.index, e.output.token_ids) for e in two] == [(0, [0, 1]), (1, [5])]
    # Nothing merges past a finish: a stray delta after it stays its own event.
    after = _coalesce([_Output(0, _out(0, 0, finished=True)), _Output(0, _out(0, 1))])
    assert [e.output.token_ids for e in after] == [[0], [1]]


class _QueuedStream:
    """An engine stream whose deltas are all waiting before the consumer reads (a consumer slower than the engine)."""

    def __init__(self, outs: list[RequestOutput]):
        self._outs = list(outs)
        self.aborted = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestOutput:
        if not self._outs:
            raise StopAsyncIteration
        return self._outs.pop(0)

    def abort(self) -> None:
        self.aborted = True


def test_a_slow_consumer_gets_fewer_larger_deltas_with_every_token():
    outs = [_out(0, t, n_out=t + 1, finished=t == 19) for t in range(20)]

    async def consume() -> list[RequestOutput]:
        run = EngineRun([_QueuedStream(outs)], timeout=10.0)
        got = []
        async for _, out in run.outputs():
            got.append(out)
            await asyncio.sleep(0.001)  # writing the chunk: more deltas could arrive meanwhile
        return got

    got = asyncio.run(consume())
    assert len(got) < len(outs)  # merged
    assert [t for o in got for t in o.token_ids] == list(range(20))  # every token, in order
    assert "".join(o.text for o in got) == "".join(f"<{t}>" for t in range(20))
    assert got[-1].finished and got[-1].num_output_tokens == 20
    assert all(not o.finished for o in got[:-1])
