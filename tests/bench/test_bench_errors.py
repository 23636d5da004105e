"""What a new user hits with `specserve bench` (issue 17 items 2 and 6): no server there, a wrong --model, a typo in
--concurrency, no matplotlib. Each is one line saying why and a non-zero exit; real subprocesses, as the user runs
them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import level_name
from bench.loadgen import error_text
from tests.helpers.tiny_models import make_tiny_pair
from tests.server.server_proc import ServerProcess

REPO = Path(__file__).resolve().parents[2]


def bench(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", "bench", "--no-progress", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    target, _ = make_tiny_pair(tmp_path_factory.mktemp("bench_err_tiny"))
    srv = ServerProcess("--model", str(target), "--served-model-name", "tiny", "--speculative-method", "none",
                        "--dtype", "float32", "--max-num-seqs", "2", "--num-threads", "1").start()
    yield srv
    srv.stop()


@pytest.fixture()
def dataset(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text(json.dumps({"prompt": "def add(a, b):"}) + "\n")
    return str(p)


def test_no_server_is_one_line_not_a_traceback():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = bench("--base-url", f"http://127.0.0.1:{port}")
    assert r.returncode == 1
    assert r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"specserve bench: error: cannot reach the server at http://127.0.0.1:{port}")
    assert "specserve serve" in line


def test_bad_concurrency_list_says_what_is_expected():
    r = bench("--concurrency", "1,x")
    assert r.returncode == 2
    (line,) = r.stderr.splitlines()
    assert "--concurrency" in line and "comma-separated positive whole numbers" in line and "'1,x'" in line
    assert "_int_list" not in line


def test_unknown_model_gives_the_servers_reason(server, dataset):
    r = bench("--base-url", server.base_url, "--model", "nope", "--dataset", dataset, "--num-prompts", "2",
              "--max-tokens", "2", "--concurrency", "1", "--warmup", "1")
    assert r.returncode == 1
    assert r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith("specserve bench: error: server: every warm-up request failed: HTTP 404: ")
    assert "'nope' does not exist" in line and "'tiny'" in line


def test_unknown_model_without_warmup_explains_the_failed_run(server, dataset):
    r = bench("--base-url", server.base_url, "--model", "nope", "--dataset", dataset, "--num-prompts", "2",
              "--max-tokens", "2", "--concurrency", "1", "--warmup", "0")
    assert r.returncode == 1
    assert "| 0/2 |" in r.stdout
    (line,) = r.stderr.splitlines()
    assert line.startswith("server c=1: 2 of 2 requests failed; first: HTTP 404: ") and "'nope'" in line


def test_without_matplotlib_plots_are_skipped_with_one_line(server, dataset, tmp_path):
    blocker = tmp_path / "no_mpl" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n")
    out = tmp_path / "run.json"
    r = bench("--base-url", server.base_url, "--dataset", dataset, "--num-prompts", "2", "--max-tokens", "2",
              "--concurrency", "1", "--warmup", "0", "--output", str(out),
              env={"PYTHONPATH": f"{blocker.parent}{os.pathsep}{REPO}"})
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines == ["plots skipped: matplotlib is not installed (pip install 'specserve[bench]')",
                     f"wrote {out}"]
    assert json.loads(out.read_text())["runs"][0]["metrics"]["completed"] == 2
    assert not list(tmp_path.glob("run_*.png"))


def test_help_shows_defaults_and_describes_every_flag():
    r = bench("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "(default: 1,4,16)" in text and "(default: 32)" in text and "(default: 0.0)" in text
    from bench import cli as bench_cli
    from server.cli import build_parser

    parser = build_parser(["bench"])
    bench_parser = parser._subparsers._group_actions[0].choices["bench"]  # the parser the user gets
    assert bench_cli.DefaultsFormatter is bench_parser.formatter_class
    undocumented = [a.option_strings for a in bench_parser._actions if not a.help]
    assert undocumented == []


def test_progress_label_names_the_level_without_none():
    assert level_name(4, None) == "c=4"
    assert level_name(None, 2.0) == "rate=2/s"
    assert level_name(8, 0.5) == "rate=0.5/s c<=8"


def test_error_text_takes_the_openai_message():
    body = json.dumps({"error": {"message": "the model 'x' does not exist", "type": "invalid_request_error"}})
    assert error_text(404, body) == "HTTP 404: the model 'x' does not exist"
    assert error_text(502, "<html>bad gateway</html>") == "HTTP 502: <html>bad gateway</html>"
