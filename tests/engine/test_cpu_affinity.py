"""`--engine-cpus`: the plan (which CPUs the engine-core and API processes get) and a real server that applies it."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from config.settings import EngineSettings
from engine.cpu_affinity import NO_BINDING, CpuPlan, available_cpus, parse_cpu_list, plan_cpus
from tests.server.server_proc import ServerProcess

FOUR = frozenset({0, 1, 2, 3})


def test_parse_cpu_list():
    assert parse_cpu_list("3") == {3}
    assert parse_cpu_list("0-2,5") == {0, 1, 2, 5}
    assert parse_cpu_list(" 1 - 2 ") == {1, 2}
    for bad in ("", "1,", "a", "2-1", "-1", "1-"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


def test_settings_validate_the_list():
    mine = min(available_cpus())
    assert EngineSettings(engine_cpus=f"{mine}").engine_cpus == f"{mine}"
    with pytest.raises(ValidationError, match="outside this process's affinity"):
        EngineSettings(engine_cpus=f"{max(available_cpus()) + 1}")
    assert EngineSettings().engine_cpus == "none"  # opt-in: not faster on a quiet machine (BENCHMARKS 6c)
    with pytest.raises(ValidationError, match="bad CPU list entry"):
        EngineSettings(engine_cpus="x")


def test_auto_gives_the_engine_the_last_cpus_and_the_api_the_rest():
    plan = plan_cpus("auto", num_threads=3, engine_process=True, cpu_device=True, available=FOUR)
    assert plan == CpuPlan(frozenset({1, 2, 3}), frozenset({0}))
    two = plan_cpus("auto", num_threads=1, engine_process=True, cpu_device=True, available=frozenset({4, 7}))
    assert two == CpuPlan(frozenset({7}), frozenset({4}))  # the mask's CPUs, not 0..n-1 (a container's cpuset)


@pytest.mark.parametrize("kw", [
    dict(num_threads=4, engine_process=True, cpu_device=True),  # no CPU would be left for the API
    dict(num_threads=1, engine_process=False, cpu_device=True),  # the engine is a thread of the API process
    dict(num_threads=1, engine_process=True, cpu_device=False),  # GPU / Neuron: the engine does not run on the CPUs
])
def test_auto_binds_nothing_where_it_cannot_help(kw):
    assert plan_cpus("auto", available=FOUR, **kw) == NO_BINDING


def test_none_and_explicit_lists():
    assert plan_cpus("none", num_threads=1, engine_process=True, cpu_device=True, available=FOUR) == NO_BINDING
    plan = plan_cpus("0,2", num_threads=2, engine_process=True, cpu_device=False, available=FOUR)
    assert plan == CpuPlan(frozenset({0, 2}), frozenset({1, 3}))
    every = plan_cpus("0-3", num_threads=4, engine_process=True, cpu_device=True, available=FOUR)
    assert every == CpuPlan(FOUR, None)  # nothing left: the API process stays as it is
    with pytest.raises(ValueError, match=r"outside this process's affinity"):
        plan_cpus("5", num_threads=1, engine_process=True, cpu_device=True, available=FOUR)


def _affinity(pid: int) -> set[frozenset[int]]:
    """The CPU masks of every thread of `pid`."""
    return {frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(len(available_cpus()) < 2, reason="binding needs at least 2 CPUs")
@pytest.mark.timeout(180)
def test_a_served_engine_and_its_api_process_run_where_the_plan_says(tiny_pair):
    expected = plan_cpus("auto", num_threads=1, engine_process=True, cpu_device=True, available=available_cpus())
    proc = ServerProcess("--model", tiny_pair[0], "--dtype", "float32", "--num-threads", "1", "--device", "cpu",
                         "--served-model-name", "aff", env={"SPECSERVE_ENGINE_CPUS": "auto"}).start()
    try:
        status, body = proc.health()
        assert status == 200
        assert _affinity(body["engine_pid"]) == {expected.engine}
        assert _affinity(proc.proc.pid) == {expected.api}  # every thread: event loop, receiver, zmq I/O
        assert f"engine core bound to CPU {max(available_cpus())}" in proc.output()
        r = proc.client().completions.create(model="aff", prompt="hi", max_tokens=4)
        assert r.usage.completion_tokens == 4
    finally:
        proc.stop()
