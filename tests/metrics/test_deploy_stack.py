"""deploy/: the compose stack wires specserve (CPU target), Prometheus and Grafana to the files that exist; the
Prometheus config passes promtool; the dashboard JSON is well formed and covers what the issue asks for."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_builds_the_cpu_image_and_mounts_existing_files():
    svc = compose()["services"]
    assert set(svc) == {"specserve", "prometheus", "grafana"}
    build = svc["specserve"]["build"]
    assert build["target"] == "cpu"
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    assert "FROM python:3.11-slim AS cpu" in (DEPLOY / build["context"] / build["dockerfile"]).read_text()
    for name in ("prometheus", "grafana"):
        for vol in svc[name]["volumes"]:
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), vol


def test_prometheus_config_scrapes_the_compose_service():
    cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["specserve:8000"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) not installed")
    r = subprocess.run(["promtool", "check", "config", "--syntax-only", str(DEPLOY / "prometheus.yml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_provisioning_points_at_the_dashboard_and_datasource():
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/specserve.yml").read_text())
    mounts = dict(v.split(":")[:2][::-1] for v in compose()["services"]["grafana"]["volumes"])
    host_dir = mounts[prov["providers"][0]["options"]["path"]]
    dash = json.loads((DEPLOY / host_dir / "specserve.json").read_text())
    uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    text = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for needed in ("specserve_request_success_total", "specserve_time_to_first_token_seconds_bucket",
                   "specserve_inter_token_latency_seconds_bucket", "specserve_generation_tokens_total",
                   "specserve_spec_decode_accepted_tokens_total", "specserve_spec_decode_draft_tokens_total",
                   "specserve_spec_decode_k_bucket", "specserve_requests_waiting", "specserve_kv_cache_usage_ratio"):
        assert needed in text, needed
