"""The async bridge: streams, aborts and draining with the engine loop on its own thread."""

from __future__ import annotations

import asyncio

import pytest

from engine.async_engine import AsyncEngine
from engine.errors import EngineStoppedError, QueueFullError
from engine.sampling.params import SamplingParams
from tests.helpers.engines import make_engine


@pytest.fixture()
def aengine(tiny_pair):
    eng = AsyncEngine(make_engine(tiny_pair[0], max_num_seqs=2, max_queue=2, max_num_batched_tokens=16,
                                  max_model_len=256), model_name="tiny")
    eng.start()
    yield eng
    eng.shutdown()


def test_stream_yields_all_choices_then_ends(aengine):
    async def go():
        ids = aengine.tokenizer.encode("def f():")
        stream = aengine.add_request(ids, SamplingParams(n=2, max_tokens=6, temperature=1.0, ignore_eos=True))
        outs = [o async for o in stream]
        return outs

    outs = asyncio.run(go())
    for i in (0, 1):
        mine = [o for o in outs if o.index == i]
        assert sum(len(o.token_ids) for o in mine) == 6
        assert mine[-1].finished and mine[-1].finish_reason == "length"


def test_abort_mid_stream_frees_slots(aengine):
    async def go():
        ids = aengine.tokenizer.encode("import os")
        stream = aengine.add_request(ids, SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True))
        got = 0
        async for o in stream:
            got += len(o.token_ids)
            if got >= 3:
                stream.abort()
            if o.finished:
                return o.finish_reason

    assert asyncio.run(go()) == "abort"
    st = aengine.stats()
    assert st.num_running == 0 and st.num_free_slots == 2 and st.healthy


def test_capacity_and_drain(aengine):
    async def go():
        ids = aengine.tokenizer.encode("x")
        p = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
        streams = [aengine.add_request(ids, p) for _ in range(4)]
        with pytest.raises(QueueFullError):
            aengine.add_request(ids, p)
        drain = asyncio.create_task(aengine.drain(timeout=30))
        await asyncio.sleep(0)
        with pytest.raises(EngineStoppedError):
            aengine.add_request(ids, p)
        finals = []
        for s in streams:
            finals.extend([o async for o in s if o.finished])
        await drain
        return finals

    finals = asyncio.run(go())
    assert [f.finish_reason for f in finals] == ["length"] * 4


def test_a_request_is_validated_once_and_booked_once(aengine, monkeypatch):
    """The caller's check is the only one: the engine thread enqueues without validating or booking again."""
    calls = []
    real = SamplingParams.validate
    monkeypatch.setattr(SamplingParams, "validate", lambda self, *a: (calls.append(1), real(self, *a))[1])
    monkeypatch.setattr(aengine.engine.scheduler, "has_capacity", lambda n: pytest.fail("capacity booked twice"))

    async def go():
        stream = aengine.add_request(aengine.tokenizer.encode("x"), SamplingParams(max_tokens=3, temperature=0.0))
        return [o async for o in stream]

    outs = asyncio.run(go())
    assert outs[-1].finish_reason in ("length", "stop") and calls == [1]
