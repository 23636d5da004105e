"""ProcessEngine (engine in its own process) against AsyncEngine (engine on a thread): same tokens, same admission
errors, structured-output params cross the boundary, counters mirrored, abort reaches the core, a killed core fails
its requests at once and is respawned."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from config.settings import Settings
from engine.async_engine import AsyncEngine
from engine.errors import EngineStoppedError, PromptTooLongError
from engine.process_engine import ProcessEngine
from engine.sampling.params import SamplingParams
from engine.structured.spec import GrammarSpec
from tests.helpers.tiny_models import make_tiny_pair

pytestmark = pytest.mark.timeout(180)

PROMPT = [5, 17, 42, 99, 7, 3]


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    target, _ = make_tiny_pair(tmp_path_factory.mktemp("pe"))
    return Settings.model_validate({
        "model": {"model": str(target), "dtype": "float32", "served_model_name": "tiny"},
        "speculation": {"speculative_method": "ngram"},
        "engine": {"engine_process": True, "max_num_seqs": 4, "num_threads": 1},
    })


@pytest.fixture(scope="module")
def engines(settings):
    proc = ProcessEngine.from_settings(settings)
    thread = AsyncEngine.from_settings(settings)
    proc.start()
    thread.start()
    yield proc, thread
    proc.shutdown()
    thread.shutdown()


async def _run(engine, prompt, params):
    toks, last = [], None
    async for out in engine.add_request(prompt, params):
        toks += out.token_ids
        last = out
    return toks, last


def test_same_tokens_and_counters(engines):
    proc, thread = engines
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)

    async def go():
        return await _run(proc, PROMPT, params), await _run(thread, PROMPT, params)

    before = proc.counters.generation_tokens
    (ptoks, plast), (ttoks, tlast) = asyncio.run(go())
    assert ptoks == ttoks and len(ptoks) == 24
    assert plast.finish_reason == tlast.finish_reason == "length"
    assert plast.num_prompt_tokens == len(PROMPT) and plast.arrival_time > 0
    assert proc.counters.generation_tokens - before == 24
    assert proc.counters.finished["length"] >= 1 and proc.counters.prompt_tokens >= len(PROMPT)
    st = proc.stats()
    assert st.healthy and st.num_running == 0 and st.num_free_slots == st.num_slots == 4


def test_structured_params_cross_the_boundary(engines):
    proc, thread = engines
    params = SamplingParams(max_tokens=40, temperature=0, structured=GrammarSpec.json_object(),
                            logit_bias={7: 3.0}, stop=["zz"])

    async def go():
        return await _run(proc, PROMPT, params), await _run(thread, PROMPT, params)

    (ptoks, plast), (ttoks, _) = asyncio.run(go())
    assert ptoks == ttoks  # the grammar constrained the core's output exactly as in-process
    assert proc.engine.structured.stats.constrained_requests >= 1  # the core saw a grammar (mirrored stat)
    text = proc.tokenizer.decode(ptoks, skip_special_tokens=True)
    assert text.lstrip().startswith("{")
    if plast.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_admission_errors_are_raised_before_enqueueing(engines):
    proc, thread = engines

    async def go():
        for engine in (proc, thread):
            with pytest.raises(PromptTooLongError):
                engine.add_request(PROMPT, SamplingParams(max_tokens=engine.max_model_len))

    asyncio.run(go())


def test_abort_reaches_the_core(engines):
    proc, _ = engines

    async def go():
        stream = proc.add_request(PROMPT, SamplingParams(max_tokens=400, temperature=0, ignore_eos=True))
        reasons = []
        async for out in stream:
            if len(reasons) == 0 and not out.finished:
                stream.abort()
            reasons.append(out.finish_reason)
        return reasons

    reasons = asyncio.run(go())
    assert reasons[-1] == "abort" and len(reasons) < 400


def test_killed_core_fails_requests_and_restarts(engines):
    proc, _ = engines
    old_pid = proc.pid

    async def go():
        stream = proc.add_request(PROMPT, SamplingParams(max_tokens=400, temperature=0, ignore_eos=True))
        last = None
        async for out in stream:
            if last is None:
                os.kill(old_pid, signal.SIGKILL)
            last = out
        assert last.finish_reason == "error" and "killed by SIGKILL" in last.error
        st = proc.stats()
        assert not st.healthy and "engine process died" in st.error
        with pytest.raises(EngineStoppedError):
            proc.add_request(PROMPT, SamplingParams(max_tokens=4))
        for _ in range(600):
            if proc.stats().healthy:
                break
            await asyncio.sleep(0.05)
        assert proc.stats().healthy and proc.restarts == 1 and proc.pid != old_pid
        assert proc.stats().num_free_slots == 4  # a fresh core reports every slot free before its first step
        tokens_before = proc.counters.generation_tokens
        toks, out = await _run(proc, PROMPT, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
        assert len(toks) == 8 and out.finish_reason == "length"
        assert proc.counters.generation_tokens == tokens_before + 8  # totals carry over the restart

    asyncio.run(go())
