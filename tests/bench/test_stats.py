"""Bench statistics on recorded synthetic streams: known token timestamps -> known percentiles."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from bench.compare import compare_ratios
from bench.loadgen import RequestSpec, poisson_arrivals, request_body
from bench.report import SCHEMA, document, markdown_table, plot_runs
from bench.stats import RequestResult, itl_per_token, percentile, spread, summarize


def test_itl_splits_multi_token_chunks_evenly():
    # chunks at 0.1 (2 tokens), 0.3 (1), 0.9 (3), 1.0 (1)
    itl = itl_per_token([0.1, 0.3, 0.9, 1.0], [2, 1, 3, 1])
    assert itl == pytest.approx([0.0, 0.2, 0.2, 0.2, 0.2, 0.1])
    # mean ITL is TPOT: (last chunk - first chunk) / (tokens - 1)
    assert sum(itl) / len(itl) == pytest.approx((1.0 - 0.1) / (7 - 1))


def test_percentiles_match_numpy_linear():
    rng = random.Random(0)
    xs = [rng.expovariate(3.0) for _ in range(101)]
    for p in (0, 50, 90, 99, 100):
        assert percentile(xs, p) == pytest.approx(float(np.percentile(xs, p)))
    assert percentile([], 50) is None


def test_spread_follows_text_length_and_sums_to_usage():
    assert spread(10, [1, 1, 8]) == [1, 1, 8]
    assert spread(10, [1, 1, 3]) == [2, 2, 6]
    assert spread(3, [5, 5, 5]) == [1, 1, 1]
    assert spread(2, [5, 5, 5]) == [1, 1, 0]  # fewer tokens than chunks (usage undercount): never negative
    assert sum(spread(17, [3, 0, 9, 1])) == 17


def _result(times, tokens, spec=None, exact=True):
    return RequestResult(ok=True, chunk_times=times, chunk_chars=[4] * len(times),
                         chunk_tokens=tokens if exact else None, e2e=times[-1] + 0.01,
                         completion_tokens=sum(tokens), prompt_tokens=5, speculation=spec)


def test_summarize_known_stream():
    spec = {"draft_tokens": 8, "accepted_tokens": 6, "target_passes": 4}
    a = _result([0.1, 0.3, 0.9, 1.0], [2, 1, 3, 1], spec)
    b = _result([0.2, 0.4], [1, 1], spec)
    bad = RequestResult(ok=False, error="HTTP 429: queue full")
    m = summarize([a, b, bad], duration=2.0)
    assert m["completed"] == 2 and m["errors"] == 1 and m["error_kinds"] == {"HTTP 429": 1}
    assert m["output_tokens"] == 9 and m["output_throughput"] == pytest.approx(4.5)
    assert m["request_throughput"] == pytest.approx(1.0)
    assert m["ttft_s"]["p50"] == pytest.approx(0.15)  # TTFTs 0.1, 0.2
    itl = [0.0, 0.2, 0.2, 0.2, 0.2, 0.1, 0.2]
    for p in (50, 90, 99):
        assert m["itl_s"][f"p{p}"] == pytest.approx(float(np.percentile(itl, p)))
    s = m["speculation"]
    assert s["acceptance_rate"] == pytest.approx(12 / 16)
    assert s["mean_accepted_length"] == pytest.approx(9 / 8)  # output tokens per target pass
    assert m["exact_token_counts"]


def test_usage_fallback_spreads_tokens_by_text():
    r = RequestResult(ok=True, chunk_times=[0.1, 0.2, 0.5], chunk_chars=[1, 1, 4], completion_tokens=6, e2e=0.6)
    assert r.tokens_per_chunk() == [1, 1, 4] and r.output_tokens == 6
    assert r.itl() == pytest.approx([0.1, 0.075, 0.075, 0.075, 0.075])


def test_poisson_arrivals_mean_rate_and_seed():
    arr = poisson_arrivals(5.0, 20000, seed=3)
    gaps = np.diff(arr)
    assert gaps.mean() == pytest.approx(0.2, rel=0.03)
    assert gaps.std() == pytest.approx(0.2, rel=0.05)  # exponential: std == mean
    assert arr == poisson_arrivals(5.0, 20000, seed=3) and arr != poisson_arrivals(5.0, 20000, seed=4)
    assert poisson_arrivals(float("inf"), 3, 0) == [0.0, 0.0, 0.0]


def test_request_body_shapes():
    spec = RequestSpec(model="m", max_tokens=7, seed=10, logprobs=True)
    path, body = request_body({"prompt": "x"}, spec, 2)
    assert path == "/v1/completions" and body["logprobs"] == 0 and body["seed"] == 12
    assert body["stream_options"] == {"include_usage": True} and body["ignore_eos"] and body["min_tokens"] == 7
    path, body = request_body({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}, spec, 0)
    assert path == "/v1/chat/completions" and body["logprobs"] is True and body["max_tokens"] == 3


def _runs():
    runs = []
    for cfg, tps in (("adaptive", (100.0, 300.0)), ("k0", (50.0, 310.0)), ("static-draft", (90.0, 200.0))):
        for conc, t in zip((1, 16), tps, strict=True):
            m = summarize([_result([0.1, 0.2], [1, 1])], duration=1.0)
            m["output_throughput"] = t
            runs.append({"config": cfg, "concurrency": conc, "request_rate": None, "metrics": m})
    return runs


def test_document_schema_table_and_plots(tmp_path):
    runs = _runs()
    doc = json.loads(json.dumps(document({"dataset": "code"}, runs)))  # JSON-serializable
    assert doc["schema"] == SCHEMA and set(doc) >= {"created", "command", "machine", "settings", "runs"}
    m = doc["runs"][0]["metrics"]
    assert set(m) >= {"num_requests", "completed", "errors", "request_throughput", "output_throughput", "ttft_s",
                      "itl_s", "e2e_s", "speculation", "duration_s"}
    assert set(m["itl_s"]) == {"p50", "p90", "p99", "mean"}
    table = markdown_table(runs)
    assert table.count("\n") == 2 + len(runs)
    paths = plot_runs(runs, tmp_path / "x")
    assert [p.rsplit("_", 1)[1] for p in paths] == ["throughput.png", "ttft.png", "itl.png"]  # no spec figures
    assert all((tmp_path / f"x_{s}").stat().st_size > 1000 for s in ("throughput.png", "ttft.png", "itl.png"))


def test_compare_ratios():
    r = compare_ratios(_runs(), {"hf_assisted_tok_s": 50.0, "hf_generate_tok_s": 25.0})
    assert r["adaptive/k0 @c=1"] == pytest.approx(2.0)
    assert r["adaptive/max(k0,static-draft) @c=16"] == pytest.approx(300 / 310)
    assert r["adaptive@c=1 (HTTP) / hf_assisted (in-process)"] == pytest.approx(2.0)
