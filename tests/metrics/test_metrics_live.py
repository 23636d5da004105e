"""/metrics of a real `specserve serve` moves by the right amounts after known requests; promtool accepts the scrape;
a real Prometheus scraping it answers the acceptance-rate and TTFT queries; the Grafana dashboard and docs/METRICS.md
ask only for metrics that exist, in PromQL that Prometheus accepts."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.metrics.conftest import API_KEY, MAX_NUM_SEQS, MODEL

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "specserve.json"
METRICS_DOC = REPO / "docs" / "METRICS.md"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMPTS = ["The quick brown fox", "Speculative decoding is", "Once upon a time", "1 2 3 4 5"]


def scrape(server) -> dict[tuple[str, tuple], float]:
    r = httpx.get(server.base_url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def v(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted({"model_name": MODEL, **labels}.items()))), 0.0)


def delta(after: dict, before: dict, name: str, **labels) -> float:
    return v(after, name, **labels) - v(before, name, **labels)


def complete(server, prompt: str, n: int = 1, max_tokens: int = 16) -> dict:
    r = httpx.post(server.v1 + "/completions", headers=AUTH, timeout=120, json={
        "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "n": n})
    assert r.status_code == 200, r.text
    return r.json()


def stream_chat(server, text: str) -> dict:
    """A streamed chat completion; returns {"id", "usage"} from the final chunk."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 12, "temperature": 0.8,
            "seed": 1, "stream": True, "stream_options": {"include_usage": True}}
    usage, rid = None, None
    with httpx.stream("POST", server.v1 + "/chat/completions", headers=AUTH, json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                rid = chunk["id"]
                usage = chunk.get("usage") or usage
    assert usage is not None
    return {"id": rid, "usage": usage, "n": 1}


def test_counters_and_histograms_move_by_known_requests(server):
    before = scrape(server)
    done = [{**complete(server, p, n=n), "n": n} for p, n in zip(PROMPTS, (1, 1, 1, 2), strict=True)]
    done.append(stream_chat(server, "hello there"))
    server.wait_idle()
    after = scrape(server)

    seqs = sum(d["n"] for d in done)
    completion = sum(d["usage"]["completion_tokens"] for d in done)
    draft = sum(d["usage"]["speculation"]["draft_tokens"] for d in done)
    accepted = sum(d["usage"]["speculation"]["accepted_tokens"] for d in done)
    passes = sum(d["usage"]["speculation"]["target_passes"] for d in done)
    assert draft > 0 and 0 <= accepted <= draft

    assert delta(after, before, "specserve_generation_tokens_total") == completion
    assert delta(after, before, "specserve_prompt_tokens_total") == sum(
        d["usage"]["prompt_tokens"] * d["n"] for d in done)
    assert delta(after, before, "specserve_spec_decode_draft_tokens_total") == draft
    assert delta(after, before, "specserve_spec_decode_accepted_tokens_total") == accepted
    per_pos = sum(val - before.get(key, 0.0) for key, val in after.items()
                  if key[0] == "specserve_spec_decode_accepted_tokens_per_pos_total")
    assert per_pos == accepted
    # one K per sequence per target pass (prefill passes verify K=0); K summed is the draft tokens
    assert delta(after, before, "specserve_spec_decode_k_count") == passes
    assert delta(after, before, "specserve_spec_decode_k_sum") == draft
    assert delta(after, before, "specserve_spec_decode_steps_total") >= 1
    # latency: TTFT, queue time and e2e once per sequence; ITL once per token after the first
    assert delta(after, before, "specserve_time_to_first_token_seconds_count") == seqs
    assert delta(after, before, "specserve_request_queue_time_seconds_count") == seqs
    assert delta(after, before, "specserve_e2e_request_latency_seconds_count") == seqs
    assert delta(after, before, "specserve_inter_token_latency_seconds_count") == completion - seqs
    assert delta(after, before, "specserve_time_to_first_token_seconds_sum") > 0
    finished = sum(delta(after, before, "specserve_request_success_total", finished_reason=r)
                   for r in ("stop", "length"))
    assert finished == seqs
    assert sum(delta(after, before, "specserve_requests_failed_total", reason=r) for r in ("abort", "error")) == 0
    assert delta(after, before, "specserve_engine_step_seconds_count") >= 1
    http = "specserve_http_responses_total"

    def http_delta(handler: str) -> float:  # no model_name on this one: it counts every route
        key = (http, (("handler", handler), ("status", "200")))
        return after.get(key, 0.0) - before.get(key, 0.0)
    assert (http_delta("/v1/completions"), http_delta("/v1/chat/completions")) == (4, 1)
    assert delta(after, before, "specserve_batch_size_count") >= 1
    assert v(after, "specserve_requests_running") == 0 and v(after, "specserve_requests_waiting") == 0
    assert v(after, "specserve_kv_cache_usage_ratio") == 0

    # the request log line and usage.speculation agree with each other (and so with the counters above)
    logs = {line["id"]: line for line in server.request_logs()}
    for d in done:
        line = logs[d["id"]]
        spec = d["usage"]["speculation"]
        assert (line["draft_tokens"], line["accepted_tokens"]) == (spec["draft_tokens"], spec["accepted_tokens"])
        assert line["completion_tokens"] == d["usage"]["completion_tokens"]
        if spec["draft_tokens"]:
            assert line["acceptance"] == round(spec["accepted_tokens"] / spec["draft_tokens"], 4)


def test_refusals_are_counted_by_reason(server):
    before = scrape(server)
    url = server.v1 + "/completions"
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4}
    assert httpx.post(url, headers=AUTH, json={**body, "n": MAX_NUM_SEQS + 1}).status_code == 429
    assert httpx.post(url, headers=AUTH, json={**body, "max_tokens": -1}).status_code == 400
    assert httpx.post(url, headers=AUTH, content=b"{not json").status_code == 400
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}, json=body).status_code == 401
    after = scrape(server)
    assert delta(after, before, "specserve_requests_rejected_total", reason="queue_full") == 1
    assert delta(after, before, "specserve_requests_rejected_total", reason="invalid_request") == 2
    assert delta(after, before, "specserve_requests_rejected_total", reason="unauthorized") == 1
    assert delta(after, before, "specserve_time_to_first_token_seconds_count") == 0


def test_live_scrape_passes_promtool_and_labels_are_bounded(server):
    r = httpx.get(server.base_url + "/metrics", timeout=10)
    names = set()
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            names.add(s.name)
            assert not s.name.endswith("_created"), s  # no created-timestamp twins
            if s.name == "specserve_build_info":
                assert set(s.labels) == {"version", "python", "torch", "transformers"} and s.value == 1
            elif s.name == "specserve_http_responses_total":  # route templates only, never raw paths
                assert set(s.labels) == {"handler", "status"} and s.labels["status"].isdigit(), s
                assert s.labels["handler"] == "other" or s.labels["handler"].startswith("/"), s
            elif s.name.startswith("specserve_"):
                assert s.labels.get("model_name") == MODEL, s
                assert set(s.labels) <= {"model_name", "le", "finished_reason", "reason", "position"}, s
    contract = ["requests_running", "requests_waiting", "time_to_first_token_seconds_bucket",
                "inter_token_latency_seconds_bucket", "e2e_request_latency_seconds_bucket",
                "request_queue_time_seconds_bucket", "prompt_tokens_total", "generation_tokens_total",
                "request_success_total", "requests_rejected_total", "spec_decode_draft_tokens_total",
                "spec_decode_accepted_tokens_total", "spec_decode_accepted_tokens_per_pos_total",
                "spec_decode_steps_total", "spec_decode_k_bucket", "kv_cache_usage_ratio", "batch_size_bucket",
                # operator additions (issue 17): failures apart from successes, step time, HTTP statuses, build
                "requests_failed_total", "engine_step_seconds_bucket", "http_responses_total", "build_info"]
    assert {"specserve_" + n for n in contract} <= names
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) not installed")
    p = subprocess.run(["promtool", "check", "metrics"], input=r.content, capture_output=True, timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode()


def wait_for(fn, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_prometheus_scrapes_acceptance_rate_and_ttft(server, prometheus):
    sel = f'{{model_name="{MODEL}"}}'
    base = scrape(server)
    d0 = v(base, "specserve_spec_decode_draft_tokens_total")
    wait_for(lambda: prometheus.scalar(f"specserve_spec_decode_draft_tokens_total{sel}") == d0, what="first scrape")
    for p in PROMPTS:
        complete(server, p, max_tokens=24)
    server.wait_idle()
    now = scrape(server)
    d1, a1 = v(now, "specserve_spec_decode_draft_tokens_total"), v(now, "specserve_spec_decode_accepted_tokens_total")
    ttft_n = v(now, "specserve_time_to_first_token_seconds_count")
    wait_for(lambda: prometheus.scalar(f"specserve_spec_decode_draft_tokens_total{sel}") == d1
             and prometheus.scalar(f"specserve_time_to_first_token_seconds_count{sel}") == ttft_n,
             what="a scrape after the requests")

    # lifetime acceptance rate: exact
    assert prometheus.scalar(f"specserve_spec_decode_accepted_tokens_total{sel} / "
                             f"specserve_spec_decode_draft_tokens_total{sel}") == pytest.approx(a1 / d1)
    # windowed, as docs/METRICS.md and the dashboard compute it: only this test's requests are in the window
    a0 = v(base, "specserve_spec_decode_accepted_tokens_total")
    rate = prometheus.scalar(f"sum(rate(specserve_spec_decode_accepted_tokens_total{sel}[1m])) / "
                             f"sum(rate(specserve_spec_decode_draft_tokens_total{sel}[1m]))")
    assert rate == pytest.approx((a1 - a0) / (d1 - d0), rel=0.1, abs=0.02)
    # mean accepted length: tokens per target pass of a speculating sequence
    k_spec = (v(now, "specserve_spec_decode_k_count") - v(now, "specserve_spec_decode_k_bucket", le="0.0")
              - v(base, "specserve_spec_decode_k_count") + v(base, "specserve_spec_decode_k_bucket", le="0.0"))
    mal = prometheus.scalar(
        f"1 + sum(rate(specserve_spec_decode_accepted_tokens_total{sel}[1m])) / "
        f"(sum(rate(specserve_spec_decode_k_count{sel}[1m])) - sum(rate(specserve_spec_decode_k_bucket{{"
        f'model_name="{MODEL}",le="0.0"}}[1m])))')
    assert mal == pytest.approx(1 + (a1 - a0) / k_spec, rel=0.1)
    # TTFT: the count and mean match the server; the median is a finite number inside the bucket range
    assert prometheus.scalar(f"specserve_time_to_first_token_seconds_sum{sel} / "
                             f"specserve_time_to_first_token_seconds_count{sel}") == pytest.approx(
        v(now, "specserve_time_to_first_token_seconds_sum") / ttft_n)
    p50 = prometheus.scalar("histogram_quantile(0.5, sum by (le) "
                            f"(rate(specserve_time_to_first_token_seconds_bucket{sel}[1m])))")
    assert p50 is not None and math.isfinite(p50) and 0 < p50 <= 80


def _grafana_to_promql(expr: str) -> str:
    """Substitute the dashboard's Grafana variables so Prometheus can evaluate the expression."""
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "5m")
            .replace("${model_name:regex}", ".*").replace("$model_name", ".*"))


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
    walk(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str) and "specserve_" in q:
            exprs.append(q)
    return exprs


def _doc_exprs() -> list[str]:
    blocks = re.findall(r"```promql\n(.*?)```", METRICS_DOC.read_text(), flags=re.S)
    return [line.strip() for b in blocks for line in b.strip().split("\n\n") if line.strip()]


def test_dashboard_and_docs_ask_only_for_live_metrics(server, prometheus):
    names = {key[0] for key in scrape(server)}
    dash_exprs, doc_exprs = _dashboard_exprs(), _doc_exprs()
    assert len(dash_exprs) >= 8 and len(doc_exprs) >= 4
    for expr in dash_exprs + doc_exprs:
        used = set(re.findall(r"\bspecserve_[A-Za-z0-9_]+", expr))
        assert used, expr
        assert used <= names, (expr, used - names)
        if not expr.startswith("label_values("):  # a Grafana variable query, not PromQL
            prometheus.query(_grafana_to_promql(" ".join(expr.split())))  # asserts status == success


def test_shipped_rules_evaluate_against_the_live_server(server, prometheus):
    """Prometheus loaded deploy/prometheus-rules.yml; after a few requests every rule evaluates without error,
    the acceptance-rate recording matches the counters, and the server reads as ready (no engine-down alert)."""
    sel = f'{{model_name="{MODEL}"}}'
    for p in PROMPTS[:2]:
        complete(server, p, max_tokens=24)
    server.wait_idle()
    now = scrape(server)
    d1 = v(now, "specserve_spec_decode_draft_tokens_total")
    wait_for(lambda: prometheus.scalar(f"specserve_spec_decode_draft_tokens_total{sel}") == d1, what="a scrape")
    assert prometheus.scalar(f"specserve_ready{sel}") == 1
    rate = wait_for(lambda: prometheus.scalar(f"specserve:spec_decode_acceptance_rate:rate5m{sel}"),
                    what="the acceptance-rate recording rule")
    assert 0 <= rate <= 1
    names = {key[0] for key in now}

    def rules() -> list[dict] | None:  # every loaded rule, once each has been evaluated at least once
        groups = httpx.get(prometheus.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        return loaded if loaded and all(r.get("lastEvaluation", "0").startswith("2") for r in loaded) else None

    loaded = wait_for(rules, what="every rule evaluated")
    assert len(loaded) == 14
    for r in loaded:
        assert r["health"] == "ok", r
        used = set(re.findall(r"\bspecserve_[A-Za-z0-9_]+", r["query"]))
        assert used <= names, (r["name"], used - names)
    firing = prometheus.query('ALERTS{alertstate="firing"}')["result"]
    assert firing == []
