"""deploy/prometheus-rules.yml: promtool accepts it, its unit tests pass (every alert fires on the series that should
trip it and stays quiet on a healthy server), the compose Prometheus loads it from where the config names it, and
every metric it reads is one the server exports (issue 17 item 8)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus-rules.yml"
RULE_TESTS = Path(__file__).with_name("prometheus_rules_test.yml")
ALERTS = {"SpecserveDown", "SpecserveEngineNotReady", "SpecserveQueueSaturated", "SpecserveHigh5xxRate",
          "SpecserveAcceptanceCollapse"}

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool (Debian package prometheus; .ci/run installs it) not installed")


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=REPO)


@needs_promtool
def test_promtool_checks_the_rules_and_the_config_that_loads_them():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("check", "config", str(DEPLOY / "prometheus.yml"))  # resolves rule_files next to the config
    assert r.returncode == 0 and "1 rule files found" in r.stdout, r.stdout + r.stderr


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    r = promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_rule_unit_tests_would_catch_a_broken_alert(tmp_path):
    """The unit tests are not vacuous: the acceptance alert with a threshold that can never trip fails them."""
    broken = RULES.read_text().replace("< 0.5 * avg_over_time", "< 0.01 * avg_over_time")
    assert broken != RULES.read_text()
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / RULES.name).write_text(broken)
    (tmp_path / "tests" / "metrics").mkdir(parents=True)
    (tmp_path / "tests" / "metrics" / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    r = promtool("test", "rules", str(tmp_path / "tests" / "metrics" / RULE_TESTS.name))
    assert r.returncode != 0 and "SpecserveAcceptanceCollapse" in r.stdout + r.stderr


def test_the_issue_alerts_exist_and_every_rule_is_tested():
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts == ALERTS
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == alerts
    for r in rules():
        if "alert" in r:
            assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]
            assert r.get("for"), f"{r['alert']} would fire on a single bad evaluation"


def test_compose_mounts_the_rules_where_the_config_names_them():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    prom = compose["services"]["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prom["volumes"] if v.startswith("./"))
    config_in = mounts["./prometheus.yml"]
    (rule_file,) = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["rule_files"]
    assert mounts["./" + RULES.name] == str(Path(config_in).parent / rule_file)


def rule_metric_names() -> set[str]:
    """Raw specserve_* metric names the rules read (recorded `specserve:` series are theirs, not the server's)."""
    return {n for r in rules() for n in re.findall(r"\bspecserve_[A-Za-z0-9_]+", r["expr"])}


def test_rules_read_only_documented_metrics():
    doc = (REPO / "docs" / "METRICS.md").read_text()
    for name in rule_metric_names():
        family = re.sub(r"_(bucket|count|sum)$", "", name)
        assert f"`{family}" in doc, f"{family} is used by a rule but not documented in docs/METRICS.md"
