"""Python 3.10 floor (the transformers-neuronx container runs Python 3.10): nothing under engine/, server/, config/, bench/
needs a newer interpreter. vermin checks statically everywhere; a pyenv 3.10 interpreter, where present, also compiles
every file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["engine", "server", "config", "bench"]
PY310 = Path("/root/.pyenv/versions/3.10.13/bin/python")


def vermin() -> list[str]:
    exe = shutil.which("vermin") or shutil.which("vermin", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "vermin"]


def run_vermin(*paths: str) -> subprocess.CompletedProcess:
    return subprocess.run([*vermin(), "--target=3.10-", "--violations", "--no-tips", "--eval-annotations",
                           "--no-parse-comments", *paths], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_vermin_finds_nothing_newer_than_310():
    out = run_vermin(*PACKAGES)
    assert out.returncode == 0, out.stdout + out.stderr


def test_vermin_flags_a_311_feature(tmp_path):
    f = tmp_path / "new.py"
    f.write_text("import tomllib\n")
    assert run_vermin(str(f)).returncode != 0


@pytest.mark.skipif(not PY310.is_file(), reason="no pyenv Python 3.10 on this machine (vermin covers the floor)")
def test_every_file_compiles_on_python_310(tmp_path):
    files = [str(p) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    code = ("import py_compile, sys\nfor i, f in enumerate(sys.argv[2:]):\n"
            "    py_compile.compile(f, cfile=f'{sys.argv[1]}/{i}.pyc', doraise=True)\n")
    out = subprocess.run([str(PY310), "-c", code, str(tmp_path), *files], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
