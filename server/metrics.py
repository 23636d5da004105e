"""Prometheus metrics (`GET /metrics`), one `CollectorRegistry` per app — never the global default registry, so
several apps in one process (tests) do not collide.

Three sources feed it (docs/METRICS.md explains every metric and the PromQL built on them):

- `on_engine_outputs`, an engine output listener (engine thread): per-token latency histograms, generated tokens,
  finished sequences. Everything here is observed per *sequence* (one choice of one prompt); for the usual request
  (n=1, one prompt) that is the request.
- `on_finish`, a request-record listener (event loop): requests the server refused (`requests_rejected_total{reason}`).
- `EngineCollector`, read at scrape time: queue gauges, slot usage, and the engine's step counters (prompt tokens,
  speculation totals, K and batch-size distributions), so the scrape is the engine's own numbers, not a copy.
- `on_step`, an engine step observer (engine thread): the step-time histogram.
- `server.http_metrics.HttpResponseCounter`, ASGI middleware: every HTTP response by route and status.

Beside them: the process and Python collectors (`process_*`, `python_*`), `specserve_build_info`, and no `_created`
twins (`NoCreatedRegistry`): Prometheus never reads them, and each doubled the series with a copy of the HELP text.

Inter-token latency is per token, not per chunk: a speculative step that delivers m tokens at time t, after the
previous token at t_prev, is observed as m gaps of (t - t_prev) / m. A 4-token verify pass therefore reads as four
fast tokens, not one slow one, and the histogram's count grows by exactly `completion_tokens - 1` per sequence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from config.served_name import served_model_name
from engine.outputs import RequestOutput
from engine.stats import StepRecord
from server.engine_client import EngineClient
from server.finish_reason import FinishReason
from server.request_log import RequestRecord
from server.state import Phase, ServerState

log = logging.getLogger("specserve.server")

PREFIX = "specserve_"
LABEL = "model_name"

# Fast hardware streams a token per millisecond or two; a loaded CPU server takes seconds to first token.
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
               0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0)
K_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# One engine step (propose + verify + select): ~1 ms on fast hardware, tens of ms for a CPU batch, seconds for a
# Neuron step that hit an uncompiled bucket.
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                2.5, 5.0, 10.0)

# HTTP status of a refused request -> `reason` label of requests_rejected_total. 503 is refined by server phase.
REJECT_REASONS = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 413: "body_too_large",
                  429: "queue_full", 503: "unavailable"}
# The engine's reasons: TOOL_CALLS is the server's reading of a STOP and never comes out of the engine.
SUCCESS_REASONS = (FinishReason.STOP, FinishReason.LENGTH)  # request_success_total{finished_reason}
# requests_failed_total{reason}: the client left, a deadline, a drain (abort); a fault (error)
FAILURE_REASONS = (FinishReason.ABORT, FinishReason.ERROR)


class NoCreatedRegistry(CollectorRegistry):
    """A registry whose scrape has no `*_created` samples. prometheus_client's switch for that
    (`disable_created_metrics`) is process-global; this keeps it per app, so nothing else in the process changes."""

    def collect(self) -> Iterable[Metric]:
        for metric in super().collect():
            if metric.type in ("counter", "histogram", "summary", "gaugehistogram"):
                metric.samples = [x for x in metric.samples if not x.name.endswith("_created")]
            yield metric


def build_labels() -> dict[str, str]:
    """specserve_build_info's labels: the versions that decide behaviour, read from package metadata (no imports)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "none"

    return {"version": ver("specserve"), "python": platform.python_version(), "torch": ver("torch"),
            "transformers": ver("transformers")}


class ServerMetrics:
    """All of the app's metrics; a listener on the engine (`attach`) and on request records (`on_finish`)."""

    def __init__(self, state: ServerState):
        self.state = state
        self.registry = NoCreatedRegistry(auto_describe=True)
        # (request id, choice) -> time of its latest token; touched only on the engine thread
        self._last_token: dict[tuple[str, int], float] = {}
        self._model: str | None = None
        reg = self.registry
        labels = [LABEL]

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=reg)

        self.ttft = hist("time_to_first_token_seconds",
                         "Seconds from arrival to the first generated token, per sequence.", TTFT_BUCKETS)
        self.itl = hist("inter_token_latency_seconds",
                        "Seconds between consecutive generated tokens, per token: a chunk of m tokens shares the gap "
                        "before it evenly.", ITL_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds",
                        "Seconds from arrival to the last token (or the end), per finished sequence.", REQUEST_BUCKETS)
        self.queue = hist("request_queue_time_seconds",
                          "Seconds from arrival to first being scheduled, per sequence.", QUEUE_BUCKETS)
        self.gen_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated and delivered.", labels,
                                  registry=reg)
        self.success = Counter(PREFIX + "request_success", "Sequences that finished normally, by finish reason "
                               "(stop, length).", [LABEL, "finished_reason"], registry=reg)
        self.failed = Counter(PREFIX + "requests_failed", "Sequences that ended without finishing, by reason (abort: "
                              "client left, deadline or drain; error: engine fault).", [LABEL, "reason"], registry=reg)
        self.step_time = hist("engine_step_seconds", "Wall seconds of one engine step (propose + verify + select).",
                              STEP_BUCKETS)
        self.http_responses = Counter(PREFIX + "http_responses", "HTTP responses by route template and status code.",
                                      ["handler", "status"], registry=reg)
        Info(PREFIX + "build", "specserve build: its version and the library versions it runs on.",
             registry=reg).info(build_labels())
        # The standard process (CPU, memory, fds) and Python (version, GC) series, on this registry, not the global one.
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        self.rejected = Counter(PREFIX + "requests_rejected", "Requests refused before generating anything, by "
                                "reason.", [LABEL, "reason"], registry=reg)
        reg.register(EngineCollector(state))

    # --- wiring --------------------------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        if self._model is None:
            engine = self.state.engine
            return engine.model_name if engine is not None else served_model_name(self.state.settings.model)
        return self._model

    def attach(self, engine: EngineClient) -> None:
        """Start listening to `engine` (once it is loaded); pre-create the label sets dashboards divide by."""
        self._model = engine.model_name
        add = getattr(engine, "add_output_listener", None)
        if add is not None:
            add(self.on_engine_outputs)
        counters = getattr(engine, "counters", None)
        if counters is not None and hasattr(counters, "step_observers"):
            counters.step_observers.append(self.on_step)
        m = self._model
        for h in (self.ttft, self.itl, self.e2e, self.queue, self.step_time):
            h.labels(m)
        self.gen_tokens.labels(m)
        for reason in SUCCESS_REASONS:
            self.success.labels(m, reason.value)
        for reason in FAILURE_REASONS:
            self.failed.labels(m, reason.value)
        for reason in ("queue_full", "invalid_request"):
            self.rejected.labels(m, reason)

    def expose(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    # --- listeners -----------------------------------------------------------------------------------------------

    def on_engine_outputs(self, outputs: list[RequestOutput]) -> None:
        """Engine thread, every step: observe per-token latencies and finished sequences."""
        m = self.model
        ttft, itl, queue = self.ttft.labels(m), self.itl.labels(m), self.queue.labels(m)
        generated = 0
        for out in outputs:
            key = (out.request_id, out.index)
            n = len(out.token_ids)
            generated += n
            prev = self._last_token.get(key)
            if n:
                t = out.token_times[-1] if out.token_times else time.monotonic()
                if prev is None:  # this chunk holds the sequence's first token
                    first = out.first_token_time if out.first_token_time is not None else t
                    ttft.observe(max(0.0, first - out.arrival_time))
                    if out.first_scheduled_time is not None:
                        queue.observe(max(0.0, out.first_scheduled_time - out.arrival_time))
                    # NOTE: prefill rows draft nothing, so a first chunk is one token; were it ever more, the
                    # rest arrived together with the first: zero gap each.
                    for _ in range(n - 1):
                        itl.observe(0.0)
                else:
                    gap = max(0.0, t - prev) / n
                    for _ in range(n):
                        itl.observe(gap)
                self._last_token[key] = t
            if out.finished:
                last = self._last_token.pop(key, None)
                end = last if last is not None else time.monotonic()
                if out.arrival_time:
                    self.e2e.labels(m).observe(max(0.0, end - out.arrival_time))
                reason = FinishReason.of(out) or FinishReason.ERROR
                if reason.succeeded:
                    self.success.labels(m, reason.value).inc()
                else:  # abort or error: a sequence that did not finish is not a success
                    self.failed.labels(m, reason.value).inc()
        if generated:
            self.gen_tokens.labels(m).inc(generated)

    def on_step(self, rec: StepRecord) -> None:
        """Engine thread, every step (engine.stats.StepRecord): its wall time."""
        self.step_time.labels(self.model).observe(rec.seconds)

    def on_finish(self, rec: RequestRecord) -> None:
        """Event loop, once per HTTP request (server.request_log.RequestRecord): count refusals."""
        reason = REJECT_REASONS.get(rec.status)
        if reason is None or rec.first_token is not None or rec.finish_reasons:
            return  # served, or failed after generation started (timeouts, aborts, disconnects are not refusals)
        if reason == "unavailable":
            reason = {Phase.LOADING: "loading", Phase.DRAINING: "draining", Phase.STOPPED: "draining"}.get(
                self.state.phase, reason)
        self.rejected.labels(self.model, reason).inc()


def _snapshot(counter: dict) -> dict:
    """Copy a dict the engine thread may be growing; retry on the rare concurrent resize."""
    for _ in range(10):
        try:
            return dict(counter)
        except RuntimeError:
            continue
    return {}


def _histogram(name: str, doc: str, model: str, counts: dict[int, int], bounds: tuple[int, ...]) -> Metric:
    """A histogram family from a Counter of integer value -> occurrences (cumulative buckets, +Inf last)."""
    fam = HistogramMetricFamily(name, doc, labels=[LABEL])
    buckets, acc = [], 0
    for b in bounds:
        acc = sum(c for v, c in counts.items() if v <= b)
        buckets.append((str(float(b)), acc))
    total = sum(counts.values())
    buckets.append(("+Inf", total))
    fam.add_metric([model], buckets, sum_value=float(sum(v * c for v, c in counts.items())))
    return fam


class EngineCollector(Collector):
    """Reads the engine at scrape time: queue gauges, slot usage, step counters. Yields nothing while loading."""

    def __init__(self, state: ServerState):
        self.state = state

    def describe(self) -> Iterable[Metric]:
        return []  # names vary with nothing; skip the registry's duplicate check for what is read at scrape time

    def collect(self) -> Iterable[Metric]:
        engine = self.state.engine
        # Also while loading or failed: the "engine down" alert needs a 0, not a gap.
        name = engine.model_name if engine is not None else served_model_name(self.state.settings.model)
        yield _gauge("ready", "1 when GET /health answers 200 (loaded and healthy), else 0.", name,
                     1.0 if self.state.health()[0] == 200 else 0.0)
        if engine is None or not hasattr(engine, "stats"):
            return
        m = engine.model_name
        try:
            st = engine.stats()
        except Exception:  # a broken engine must not break the scrape
            log.exception("engine stats failed during a metrics scrape")
            st = None
        if st is not None:
            yield _gauge("requests_running", "Sequences holding a slot and generating.", m, st.num_running)
            yield _gauge("requests_waiting", "Sequences admitted and waiting for a slot.", m, st.num_waiting)
            used = (st.num_slots - st.num_free_slots) / st.num_slots if st.num_slots else 0.0
            yield _gauge("kv_cache_usage_ratio", "Fraction of KV-cache slots in use (one slot per running "
                         "sequence).", m, used)
        c = getattr(engine, "counters", None)
        if c is None:
            return
        yield _counter("prompt_tokens", "Prompt tokens admitted (times n for n > 1).", m, c.prompt_tokens)
        yield _counter("spec_decode_draft_tokens", "Draft tokens proposed and verified by the target.", m,
                       c.draft_tokens)
        yield _counter("spec_decode_accepted_tokens", "Draft tokens accepted by the rejection sampler.", m,
                       c.accepted_tokens)
        yield _counter("spec_decode_steps", "Engine steps in which at least one sequence verified drafts.", m,
                       c.spec_steps)
        per_pos = CounterMetricFamily(PREFIX + "spec_decode_accepted_tokens_per_pos",
                                      "Draft tokens accepted at each 0-based draft position.",
                                      labels=[LABEL, "position"])
        for pos, n in sorted(_snapshot(c.accepted_per_pos).items()):
            per_pos.add_metric([m, str(pos)], n)
        yield per_pos
        yield _histogram(PREFIX + "spec_decode_k", "Draft length K verified per sequence per step (K=0: no "
                         "drafting, including prefill).", m, _snapshot(c.k_chosen), K_BUCKETS)
        yield _histogram(PREFIX + "batch_size", "Sequences producing tokens per engine step.", m,
                         _snapshot(c.batch_sizes), BATCH_BUCKETS)
        structured = getattr(getattr(engine, "engine", None), "structured", None)  # engine.structured.support
        if structured is not None:
            s = structured.stats
            yield _counter("structured_requests", "Requests whose output a grammar constrained (response_format, "
                           "a required or named tool call).", m, s.constrained_requests)
            yield _counter("grammar_compiles", "Grammars compiled (cache misses: once per distinct schema).", m,
                           s.compiled)
            yield _counter("grammar_compile_seconds", "Seconds spent compiling grammars.", m, s.compile_seconds)
            yield _counter("spec_decode_forced_tokens", "Accepted draft tokens that the grammar forced (proposed "
                           "at no model cost).", m, s.forced_tokens)


def _gauge(name: str, doc: str, model: str, value: float) -> Metric:
    fam = GaugeMetricFamily(PREFIX + name, doc, labels=[LABEL])
    fam.add_metric([model], value)
    return fam


def _counter(name: str, doc: str, model: str, value: float) -> Metric:
    fam = CounterMetricFamily(PREFIX + name, doc, labels=[LABEL])
    fam.add_metric([model], value)
    return fam
