"""ServerMetrics fed directly with engine outputs and request records: per-token ITL, TTFT once, refusal reasons,
the engine collector's histograms, success vs failed sequences, the step-time histogram, build info, process/Python
collectors, no `_created` twins, and a scrape that `promtool check metrics` accepts."""

from __future__ import annotations

import shutil
import subprocess
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from config.settings import Settings
from engine.outputs import RequestOutput, SpecStats
from engine.stats import EngineCounters, StepRecord
from server.metrics import ServerMetrics
from server.state import Phase, ServerState

MODEL = "unit-model"


class StubEngine:
    model_name = MODEL

    def __init__(self):
        self.counters = EngineCounters()
        self.listeners = []

    def add_output_listener(self, fn):
        self.listeners.append(fn)

    def stats(self):
        return SimpleNamespace(num_running=3, num_waiting=2, num_free_slots=1, num_slots=4, healthy=True, error=None,
                               draining=False)


def make_metrics(engine=None):
    state = ServerState(Settings(), engine=engine, phase=Phase.READY)
    m = ServerMetrics(state)
    if engine is not None:
        m.attach(engine)
    return m, state


def samples(m: ServerMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(m.expose().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: ServerMetrics, name: str, **labels) -> float:
    labels = {"model_name": MODEL, **labels}
    return samples(m).get((name, tuple(sorted(labels.items()))), 0.0)


def out(rid, toks, t, finished=False, reason=None, arrival=10.0):
    return RequestOutput(rid, 0, list(toks), "x" * len(toks), finished=finished, finish_reason=reason,
                         token_times=[t] * len(toks), arrival_time=arrival, first_scheduled_time=arrival + 0.25,
                         first_token_time=arrival + 0.5, num_output_tokens=0, spec=SpecStats())


def test_itl_is_per_token_and_ttft_once_per_sequence():
    eng = StubEngine()
    m, _ = make_metrics(eng)
    (listen,) = eng.listeners
    listen([out("a", [1], 10.5)])  # first token: TTFT 0.5, queue 0.25
    listen([out("a", [2, 3, 4, 5], 10.9)])  # a 4-token verify pass 0.4 s later: four gaps of 0.1 s
    listen([out("a", [6], 10.92, finished=True, reason="stop")])  # one gap of 0.02
    itl = "specserve_inter_token_latency_seconds"
    assert value(m, itl + "_count") == 5  # tokens - 1
    assert value(m, itl + "_sum") == pytest.approx(0.42)
    assert value(m, itl + "_bucket", le="0.02") == 1  # the chunk did not read as one 0.4 s token
    assert value(m, itl + "_bucket", le="0.075") == 1 and value(m, itl + "_bucket", le="0.15") == 5
    assert value(m, "specserve_time_to_first_token_seconds_count") == 1
    assert value(m, "specserve_time_to_first_token_seconds_sum") == pytest.approx(0.5)
    assert value(m, "specserve_request_queue_time_seconds_sum") == pytest.approx(0.25)
    assert value(m, "specserve_e2e_request_latency_seconds_sum") == pytest.approx(0.92)
    assert value(m, "specserve_generation_tokens_total") == 6
    assert value(m, "specserve_request_success_total", finished_reason="stop") == 1
    assert value(m, "specserve_request_success_total", finished_reason="length") == 0  # pre-created


def test_engine_collector_reads_counters_at_scrape_time():
    eng = StubEngine()
    m, _ = make_metrics(eng)
    eng.counters.prompt_tokens = 7
    eng.counters.record_step(StepRecord(batch_size=2, num_prefill_tokens=0, num_draft=[4, 0], num_accepted=[2, 0],
                                        emitted_tokens=4, seconds=0.01))
    eng.counters.record_step(StepRecord(batch_size=1, num_prefill_tokens=0, num_draft=[3], num_accepted=[3],
                                        emitted_tokens=4, seconds=0.01))
    assert value(m, "specserve_requests_running") == 3
    assert value(m, "specserve_requests_waiting") == 2
    assert value(m, "specserve_kv_cache_usage_ratio") == 0.75
    assert value(m, "specserve_prompt_tokens_total") == 7
    assert value(m, "specserve_spec_decode_draft_tokens_total") == 7
    assert value(m, "specserve_spec_decode_accepted_tokens_total") == 5
    assert value(m, "specserve_spec_decode_steps_total") == 2
    assert value(m, "specserve_spec_decode_accepted_tokens_per_pos_total", position="0") == 2
    assert value(m, "specserve_spec_decode_accepted_tokens_per_pos_total", position="2") == 1
    k = "specserve_spec_decode_k"
    assert value(m, k + "_count") == 3 and value(m, k + "_sum") == 7
    assert [value(m, k + "_bucket", le=le) for le in ("0.0", "2.0", "3.0", "4.0", "+Inf")] == [1, 1, 2, 3, 3]
    assert value(m, "specserve_batch_size_count") == 2 and value(m, "specserve_batch_size_sum") == 3
    assert value(m, "specserve_batch_size_bucket", le="1.0") == 1


@pytest.mark.parametrize("status,phase,reason", [
    (429, Phase.READY, "queue_full"), (400, Phase.READY, "invalid_request"), (401, Phase.READY, "unauthorized"),
    (413, Phase.READY, "body_too_large"), (503, Phase.DRAINING, "draining"), (503, Phase.LOADING, "loading"),
])
def test_refusals_counted_by_reason(status, phase, reason):
    m, state = make_metrics(StubEngine())
    state.phase = phase
    m.on_finish(SimpleNamespace(status=status, first_token=None, finish_reasons=[]))
    m.on_finish(SimpleNamespace(status=200, first_token=1.0, finish_reasons=["stop"]))
    m.on_finish(SimpleNamespace(status=503, first_token=1.0, finish_reasons=["abort"]))  # aborted mid-way: not a refusal
    assert value(m, "specserve_requests_rejected_total", reason=reason) == 1
    total = sum(v for (n, _), v in samples(m).items() if n == "specserve_requests_rejected_total")
    assert total == 1


def test_refusal_while_loading_uses_the_configured_name():
    state = ServerState(Settings(), phase=Phase.LOADING)
    m = ServerMetrics(state)
    m.on_finish(SimpleNamespace(status=503, first_token=None, finish_reasons=[]))
    fams = {f.name: f for f in text_string_to_metric_families(m.expose().decode())}
    (s,) = fams["specserve_requests_rejected"].samples[:1]
    assert s.labels == {"model_name": "specserve-demo", "reason": "loading"}
    assert "specserve_requests_running" not in fams  # no engine yet: nothing read at scrape time
    assert fams["specserve_ready"].samples[0].value == 0.0  # the "engine down" alert sees a 0 while loading


def test_ready_gauge_follows_health():
    m, state = make_metrics(StubEngine())
    assert value(m, "specserve_ready") == 1.0
    state.phase = Phase.DRAINING
    assert value(m, "specserve_ready") == 0.0


def test_registries_are_per_app():
    a, _ = make_metrics(StubEngine())
    b, _ = make_metrics(StubEngine())  # a second app in the same process registers the same names again
    assert a.registry is not b.registry


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_a_scrape_with_every_family():
    eng = StubEngine()
    m, _ = make_metrics(eng)
    eng.counters.record_step(StepRecord(1, 0, [2], [1], 2, 0.01))
    eng.listeners[0]([out("a", [1], 10.5), out("b", [1, 2], 10.6, finished=True, reason="length"),
                      out("c", [1], 10.7, finished=True, reason="abort")])
    r = subprocess.run(["promtool", "check", "metrics"], input=m.expose(), capture_output=True, timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()


def test_aborts_and_errors_are_failures_not_successes():
    eng = StubEngine()
    m, _ = make_metrics(eng)
    (listen,) = eng.listeners
    listen([out("a", [1], 10.5, finished=True, reason="length"), out("b", [1], 10.5, finished=True, reason="abort"),
            out("c", [], 10.5, finished=True, reason="error"), out("d", [1], 10.5, finished=True, reason="abort")])
    assert value(m, "specserve_request_success_total", finished_reason="length") == 1
    assert value(m, "specserve_request_success_total", finished_reason="stop") == 0
    success_labels = {dict(k[1])["finished_reason"] for k in samples(m) if k[0] == "specserve_request_success_total"}
    assert success_labels == {"stop", "length"}
    assert value(m, "specserve_requests_failed_total", reason="abort") == 2
    assert value(m, "specserve_requests_failed_total", reason="error") == 1
    assert value(m, "specserve_e2e_request_latency_seconds_count") == 4  # latency still covers every finish


def test_engine_step_time_histogram():
    eng = StubEngine()
    m, _ = make_metrics(eng)
    for seconds in (0.004, 0.02, 0.3):
        eng.counters.record_step(StepRecord(1, 0, [2], [1], 2, seconds))
    h = "specserve_engine_step_seconds"
    assert value(m, h + "_count") == 3 and value(m, h + "_sum") == pytest.approx(0.324)
    assert value(m, h + "_bucket", le="0.005") == 1 and value(m, h + "_bucket", le="0.02") == 2
    assert value(m, h + "_bucket", le="+Inf") == 3


def test_no_created_twins_and_one_help_per_family():
    eng = StubEngine()
    m, _ = make_metrics(eng)
    eng.listeners[0]([out("a", [1], 10.5, finished=True, reason="stop")])
    text = m.expose().decode()
    assert "_created" not in text
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps))


def test_build_info_and_process_python_collectors():
    m, _ = make_metrics(StubEngine())
    s = samples(m)
    (build,) = [dict(k[1]) for k in s if k[0] == "specserve_build_info"]
    assert set(build) == {"version", "python", "torch", "transformers"}
    assert build["version"] not in ("", "none") and build["python"].count(".") == 2
    names = {k[0] for k in s}
    assert "python_info" in names and "python_gc_collections_total" in names
    assert "process_resident_memory_bytes" in names and "process_cpu_seconds_total" in names
