"""tools/ci_matrix.py: its jobs name real tests and consistent pins, pytest's junit file is counted right, and the
Python floor check rejects what Python 3.10 or 3.12 would reject."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import ci_matrix  # noqa: E402


def test_jobs_follow_the_containers():
    jobs = ci_matrix.JOBS
    assert [j.pins[0] for j in jobs.values()] == ["transformers==4.48.3", "transformers==4.51.3", "transformers==4.57.6"]
    for job in jobs.values():
        assert ci_matrix.HUB_4X in job.pins  # transformers 4.x needs huggingface_hub < 1.0
        if "numpy==1.23.5" in job.pins:
            assert "scipy==1.11.4" in job.pins  # the venv's scipy is built for numpy 2 and would not import
            assert set(ci_matrix.NUMPY_TESTS) <= set(job.tests)
        assert set(ci_matrix.TRANSFORMERS_TESTS) <= set(job.tests)
        assert ci_matrix.pin_dir(job).is_relative_to(ROOT / "build")  # git-ignored


def test_every_named_test_exists():
    names = {*ci_matrix.TRANSFORMERS_TESTS, *ci_matrix.NUMPY_TESTS, *ci_matrix.DESELECT, *ci_matrix.KNOWN_4X}
    for node in names:
        path, _, func = node.partition("::")
        assert (ROOT / path).exists(), node
        if func:
            assert f"def {func}(" in (ROOT / path).read_text(), node


def test_junit_counts(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text("""<testsuites><testsuite>
      <testcase classname="tests.engine.test_a" name="test_ok"/>
      <testcase classname="tests.engine.test_a" name="test_bad[1]"><failure message="x"/></testcase>
      <testcase classname="tests.engine.test_b" name="test_err"><error message="y"/></testcase>
      <testcase classname="tests.engine.test_b" name="test_skip"><skipped message="z"/></testcase>
    </testsuite></testsuites>""")
    counts, bad = ci_matrix.junit_counts(xml)
    assert counts == {"passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    assert bad == ["tests/engine/test_a.py::test_bad[1]", "tests/engine/test_b.py::test_err"]


@pytest.mark.parametrize("ver", list(ci_matrix.FLOOR_PYTHONS))
def test_floor_compile_rejects_what_that_python_rejects(tmp_path, ver):
    exe = ci_matrix.FLOOR_PYTHONS[ver]
    if not exe.is_file():
        pytest.skip(f"no pyenv Python {ver} at {exe}")
    good = tmp_path / "good.py"
    good.write_text("x: int | None = None\n")
    escape = tmp_path / "escape.py"
    escape.write_text('PAT = "\\d+"\n')  # the file says "\d+": an invalid escape sequence
    assert ci_matrix.compile_all(exe, [str(good)]).returncode == 0
    assert ci_matrix.compile_all(exe, [str(escape)]).returncode != 0  # DeprecationWarning 3.10, SyntaxWarning 3.12
    newer = tmp_path / "newer.py"
    newer.write_text("type Alias = int\n")  # 3.12 syntax
    assert (ci_matrix.compile_all(exe, [str(newer)]).returncode == 0) == (ver == "3.12")
