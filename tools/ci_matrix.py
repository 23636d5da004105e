"""CI matrix: the tests that touch transformers, tokenizers and numpy, under each AWS Neuron inference container's pins.

Each job installs its pins with `pip install --target build/ci-matrix/<job> --no-deps` (about 20 s, once: a stamp file
keeps the install until the pins change) and runs pytest with `PYTHONPATH=<that dir>` on the project venv's python,
so the container's transformers/tokenizers/numpy shadow the venv's while torch and everything else stay. A full venv
with torch per job would cost minutes each. torch is 2.13 CPU here, not the containers' 2.7-2.9 (no older CPU torch
installs on this Python); what these jobs check is the Python stack specserve has to fit around.

The pins follow aws-neuron/deep-learning-containers' Dockerfiles at each SDK release (see docs/NEURON.md, "Support
matrix"); numpy 1.23 also needs a scipy built for numpy 1.x (the venv's scipy 1.17 is built against numpy 2 and does
not import under 1.23), so scipy 1.11.4 is pinned with it. The `floor` job compiles every file under Python 3.10 and
3.12 with warnings as errors (3.12 turned invalid escapes into SyntaxWarning) and runs vermin for the 3.10 floor.

    python tools/ci_matrix.py              # every job; exit 1 if any fails; a JSON summary on the last line
    python tools/ci_matrix.py --jobs sdk2.25-tf4.48,floor
    python tools/ci_matrix.py --list
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "ci-matrix"  # build/ is git-ignored
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
FLOOR_PYTHONS = {"3.10": PYENV / "3.10.13" / "bin" / "python", "3.12": PYENV / "3.12.1" / "bin" / "python"}

# Where specserve meets transformers/tokenizers: loading, tokenizers, chat templates, checkpoints, the HTTP layer.
TRANSFORMERS_TESTS = [
    "tests/engine/models", "tests/engine/test_demo_pair.py", "tests/engine/test_detokenizer.py",
    "tests/engine/test_default_model.py", "tests/engine/runners", "tests/engine/test_engine.py",
    "tests/server/test_openai_api.py", "tests/server/test_app_inprocess.py", "tests/config",
]
# The rest of the engine: sampling, speculation, statistics (scipy) - numpy-heavy, run where numpy differs.
NUMPY_TESTS = [
    "tests/engine/sampling", "tests/engine/spec_decode", "tests/engine/test_scheduler.py", "tests/engine/test_seeds.py",
    "tests/engine/test_async_engine.py",
]
# Left out on purpose, each with its reason (printed with every run).
DESELECT = {
    "tests/engine/runners/test_torch_compiled.py":
        "torch.compile of the project's own model; no transformers/numpy code; 20 s per job",
    "tests/engine/runners/neuron/test_neuron_findings.py::"
    "test_nxdi_config_gets_rope_theta_when_config_json_has_only_rope_parameters":
        "needs transformers 5: builds its rope_parameters-only config with save_pretrained, which 4.x writes with "
        "rope_theta (the case it covers cannot arise there)",
}
# Known failures under 4.x, kept visible: reported, not counted against the job (each names the issue it belongs to).
KNOWN_4X: dict[str, str] = {}  # none today

HUB_4X = "huggingface_hub>=0.34,<1.0"  # transformers 4.x requires hub < 1.0; the venv has 1.x/2.x for transformers 5
NUMPY_1 = ["numpy==1.23.5", "scipy==1.11.4"]  # images pin numpy<1.24,>1.21


@dataclass(frozen=True)
class Job:
    name: str
    image: str  # the container tag whose pins these are
    pins: list[str]
    tests: list[str]
    expect: dict[str, str] = field(default_factory=dict)  # module -> version prefix the job must import
    known_failures: dict[str, str] = field(default_factory=dict)


JOBS = {j.name: j for j in [
    Job("sdk2.25-tf4.48", "2.7.0-neuronx-py310-sdk2.25.0-ubuntu22.04 (transformers-neuronx)",
        ["transformers==4.48.3", "tokenizers>=0.21,<0.22", HUB_4X, *NUMPY_1], TRANSFORMERS_TESTS + NUMPY_TESTS,
        {"transformers": "4.48.", "numpy": "1.23.", "scipy": "1.11."}, KNOWN_4X),
    Job("sdk2.26-tf4.51", "2.8.0-neuronx-py311-sdk2.26.0-ubuntu22.04 (NxD Inference 0.6)",
        ["transformers==4.51.3", "tokenizers>=0.21,<0.22", HUB_4X, *NUMPY_1], TRANSFORMERS_TESTS + NUMPY_TESTS,
        {"transformers": "4.51.", "numpy": "1.23.", "scipy": "1.11."}, KNOWN_4X),
    Job("sdk2.28-tf4.57", "2.9.0-neuronx-py312-sdk2.28.0-ubuntu24.04 (NxD Inference 0.8; numpy unpinned)",
        ["transformers==4.57.6", "tokenizers>=0.22,<=0.23.0", HUB_4X], TRANSFORMERS_TESTS,
        {"transformers": "4.57."}, KNOWN_4X),
]}


def pin_dir(job: Job) -> Path:
    return WORK / job.name


def install(job: Job) -> float:
    """Install the job's pins into its own directory unless the stamp says they are there; return seconds spent."""
    d = pin_dir(job)
    stamp = d / ".pins"
    want = hashlib.sha256("\n".join(job.pins).encode()).hexdigest()
    if stamp.is_file() and stamp.read_text() == want:
        return 0.0
    t0 = time.monotonic()
    shutil.rmtree(d, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--target", str(d), *job.pins], check=True, cwd=ROOT)
    stamp.write_text(want)
    return time.monotonic() - t0


def job_env(job: Job) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(pin_dir(job)), PYTHONNOUSERSITE="1")
    env.pop("PYTHONHOME", None)
    return env


def check_versions(job: Job) -> dict[str, str]:
    """The versions the job's interpreter really imports; raise if a pin did not take (e.g. shadowed)."""
    mods = sorted({"transformers", "tokenizers", "numpy", "huggingface_hub", *job.expect})
    code = "import importlib, json, sys; print(json.dumps({m: importlib.import_module(m).__version__ for m in sys.argv[1:]}))"
    out = subprocess.run([sys.executable, "-c", code, *mods], env=job_env(job), cwd=ROOT, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{job.name}: the pinned stack does not import:\n{out.stderr}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    bad = {m: got[m] for m, prefix in job.expect.items() if not got[m].startswith(prefix)}
    if bad:
        raise RuntimeError(f"{job.name}: expected {job.expect}, imported {got}")
    return got


def junit_counts(path: Path) -> tuple[dict[str, int], list[str]]:
    """(passed/failed/errors/skipped counts, ids of failed or errored tests) from a pytest junit XML file."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    bad = []
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
        if case.find("failure") is not None:
            counts["failed"] += 1
            bad.append(tid)
        elif case.find("error") is not None:
            counts["errors"] += 1
            bad.append(tid)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, bad


def run_tests(job: Job) -> dict:
    t0 = time.monotonic()
    installed_s = install(job)
    versions = check_versions(job)
    xml = WORK / f"{job.name}.xml"
    cmd = [sys.executable, "-m", "pytest", *job.tests, "-q", "-p", "no:cacheprovider", "-rfEs", f"--junitxml={xml}"]
    for node in DESELECT:
        cmd += ["--deselect", node]
    print(f"== {job.name}: {job.image}\n   imports {versions}", flush=True)
    rc = subprocess.run(cmd, env=job_env(job), cwd=ROOT).returncode
    counts, bad = junit_counts(xml) if xml.is_file() else ({}, [])
    unexpected = [b for b in bad if b not in job.known_failures]
    known = sorted(set(bad) - set(unexpected))
    ok = rc in (0, 1) and not unexpected and bool(counts.get("passed"))
    return {"job": job.name, "ok": ok, "pytest_rc": rc, **counts, "known_failures": known,
            "unexpected_failures": unexpected, "versions": versions, "install_s": round(installed_s, 1),
            "seconds": round(time.monotonic() - t0, 1)}


def compile_all(exe: Path, files: list[str]) -> subprocess.CompletedProcess:
    """py_compile every file with interpreter `exe`, warnings (SyntaxWarning, DeprecationWarning) as errors."""
    code = ("import py_compile, sys, tempfile, warnings\nwarnings.simplefilter('error')\n"
            "d = tempfile.mkdtemp()\nfor i, f in enumerate(sys.argv[1:]):\n"
            "    py_compile.compile(f, cfile=f'{d}/{i}.pyc', doraise=True)\n")
    return subprocess.run([str(exe), "-c", code, *files], capture_output=True, text=True, cwd=ROOT)


def run_floor() -> dict:
    """Every .py file of the distribution and tools compiles under 3.10 and 3.12 (warnings as errors); vermin finds
    nothing newer than 3.10 in the packages the containers import."""
    t0 = time.monotonic()
    files = [str(p) for pkg in ("engine", "server", "config", "bench", "tools") for p in sorted((ROOT / pkg).rglob("*.py"))]
    result: dict = {"job": "floor", "files": len(files)}
    ok = True
    for ver, exe in FLOOR_PYTHONS.items():
        if not exe.is_file():
            result[f"py{ver}"] = f"missing {exe}"
            ok = False
            continue
        out = compile_all(exe, files)
        result[f"py{ver}"] = "ok" if out.returncode == 0 else out.stderr.strip()[-2000:]
        ok &= out.returncode == 0
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    out = subprocess.run([vermin or "vermin", "--target=3.10-", "--violations", "--no-tips", "--eval-annotations",
                          "--no-parse-comments", "engine", "server", "config", "bench"], capture_output=True, text=True, cwd=ROOT)
    result["vermin_3.10"] = "ok" if out.returncode == 0 else (out.stdout + out.stderr).strip()[-2000:]
    ok &= out.returncode == 0
    print(f"== floor: {json.dumps(result)}", flush=True)
    return {**result, "ok": ok, "seconds": round(time.monotonic() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", default=",".join([*JOBS, "floor"]), help="comma-separated job names (default: all)")
    ap.add_argument("--list", action="store_true", help="print the jobs and what each leaves out, then exit")
    args = ap.parse_args(argv)
    if args.list:
        for job in JOBS.values():
            print(f"{job.name}: {job.image}\n  pins: {' '.join(job.pins)}\n  tests: {' '.join(job.tests)}")
        print("floor: py_compile under " + ", ".join(FLOOR_PYTHONS) + " + vermin 3.10")
        for node, why in {**DESELECT, **KNOWN_4X}.items():
            print(f"left out / known: {node}: {why}")
        return 0
    names = [n for n in args.jobs.split(",") if n]
    unknown = [n for n in names if n not in JOBS and n != "floor"]
    if unknown:
        ap.error(f"unknown job(s) {unknown}; known: {[*JOBS, 'floor']}")
    WORK.mkdir(parents=True, exist_ok=True)
    for node, why in DESELECT.items():
        print(f"deselected {node}: {why}")
    results = [run_floor() if n == "floor" else run_tests(JOBS[n]) for n in names]
    for r in results:
        for k in r.get("known_failures", []):
            print(f"known failure in {r['job']}: {k}: {JOBS[r['job']].known_failures.get(k, KNOWN_4X.get(k, ''))}")
    print(json.dumps({"matrix": results}))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
