"""Fixtures: one real `specserve serve` (tiny draft/target pair, static K so speculation counters move) and one real
Prometheus server scraping it every second from a temp config and storage dir."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.server.server_proc import ServerProcess

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-rules.yml"
API_KEY = "sk-metrics"
MODEL = "tiny-metrics"
MAX_NUM_SEQS = 2


@pytest.fixture(scope="module")
def server(tiny_pair):
    target, draft = tiny_pair
    proc = ServerProcess(
        "--model", target, "--draft-model", draft, "--speculative-method", "draft", "--speculative-policy", "static",
        "--num-speculative-tokens", "3", "--served-model-name", MODEL, "--dtype", "float32",
        # max-queue 0: a request with n > max-num-seqs is refused with 429 at once, deterministically
        "--max-num-seqs", MAX_NUM_SEQS, "--max-queue", "0", "--max-n", "4", api_key=API_KEY,
    ).start()
    yield proc
    proc.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusServer:
    """`prometheus` on a free loopback port, scraping `target` (host:port) every second."""

    def __init__(self, target: str, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = workdir / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{RULES}']\n"  # the shipped recording rules and alerts, evaluated every second
            "scrape_configs:\n"
            f"  - job_name: specserve\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not start:\n{(workdir / 'prometheus.log').read_text()}")
            time.sleep(0.1)

    def query(self, expr: str) -> dict:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert body.get("status") == "success", (expr, body)
        return body["data"]

    def scalar(self, expr: str) -> float | None:
        """Value of a query that yields one series (None when it yields none)."""
        result = self.query(expr)["result"]
        if not result:
            return None
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus (Debian package prometheus) not installed")
    prom = PrometheusServer(server.base_url.removeprefix("http://"), tmp_path_factory.mktemp("prometheus"))
    yield prom
    prom.stop()
