"""`specserve bench` against a live `specserve serve` on a tiny random model: zero errors, sane numbers, valid output."""

from __future__ import annotations

import json

import pytest

from server.cli import main as cli_main
from tests.helpers.tiny_models import make_tiny_pair
from tests.server.server_proc import ServerProcess

PROMPTS = [
    {"prompt": "def add(a, b):\n    return"},
    {"prompt": "for i in range(10):\n"},
    {"messages": [{"role": "user", "content": "Continue: class Point:"}]},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    target, _ = make_tiny_pair(tmp_path_factory.mktemp("bench_tiny"))
    srv = ServerProcess("--model", str(target), "--served-model-name", "tiny", "--speculative-method", "ngram",
                        "--speculative-policy", "static", "--dtype", "float32", "--max-num-seqs", "4",
                        "--num-threads", "1").start()
    yield srv
    srv.stop()


@pytest.fixture()
def dataset(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in PROMPTS))
    return str(p)


def _bench(server, tmp_path, dataset, *extra: str) -> dict:
    out = tmp_path / "run.json"
    rc = cli_main(["bench", "--base-url", server.base_url, "--dataset", dataset, "--num-prompts", "6",
                   "--max-tokens", "8", "--warmup", "1", "--no-progress", "--output", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_concurrency_sweep(server, tmp_path, dataset):
    doc = _bench(server, tmp_path, dataset, "--concurrency", "1,3")
    assert doc["schema"] == "specserve-bench/1" and doc["settings"]["model"] == "tiny"
    assert [r["concurrency"] for r in doc["runs"]] == [1, 3]
    for r in doc["runs"]:
        m = r["metrics"]
        assert m["errors"] == 0 and m["completed"] == 6
        assert m["output_tokens"] == 6 * 8  # length control: exactly max_tokens each
        assert m["output_throughput"] > 0 and m["request_throughput"] > 0
        assert 0 < m["ttft_s"]["p50"] <= m["ttft_s"]["p99"] <= m["e2e_s"]["p99"]
        assert 0 <= m["itl_s"]["p50"] <= m["itl_s"]["p99"] < m["e2e_s"]["p99"]
        s = m["speculation"]  # the server reports usage.speculation
        assert s is not None and s["target_passes"] > 0 and s["mean_accepted_length"] >= 1.0
    assert (tmp_path / "run.md").read_text().startswith("| config |")
    assert (tmp_path / "run_throughput.png").stat().st_size > 1000


def test_poisson_with_exact_token_counts(server, tmp_path, dataset):
    doc = _bench(server, tmp_path, dataset, "--request-rate", "20", "--concurrency", "4", "--logprobs", "--no-plots")
    (r,) = doc["runs"]
    m = r["metrics"]
    assert r["request_rate"] == 20 and m["errors"] == 0 and m["exact_token_counts"]
    assert m["output_tokens"] == 6 * 8
