"""Fixtures for the reliability suite: the soak switch, one shared tiny model pair, one shared server under test.

CI settings are sized for about three minutes on a 2-core machine; `--soak` (or SPECSERVE_SOAK=1) multiplies the load,
the storm and the fuzzing budget for longer runs. `--soak` is registered here, so pass it with this folder on the
command line (`pytest tests/reliability --soak`); the environment variable works from anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.tiny_models import make_tiny_pair
from tests.server.server_proc import ServerProcess

MODEL = "tiny"
MAX_MODEL_LEN = 4096  # long enough that a prefill of a few thousand tokens takes several engine steps
NUM_SLOTS = 8
MAX_QUEUE = 64


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="reliability suite: heavier load, storms and fuzzing (also SPECSERVE_SOAK=1)")


@dataclass(frozen=True)
class Scale:
    """How hard each test pushes. CI: a few minutes in total on 2 cores; soak: as long as it takes."""

    soak: bool
    load_clients: int  # concurrent streaming clients in the load test
    load_waves: int  # how many times the load test fires them all
    storm_clients: int  # clients that vanish in the disconnect storm
    fuzz_examples: int  # schemathesis examples per operation and generation mode
    shutdown_streams: int  # streams in flight when SIGTERM arrives


@pytest.fixture(scope="session")
def scale(request: pytest.FixtureRequest) -> Scale:
    soak = bool(request.config.getoption("--soak", default=False)) or os.environ.get("SPECSERVE_SOAK") == "1"
    if soak:
        return Scale(True, load_clients=1000, load_waves=5, storm_clients=600, fuzz_examples=200,
                     shutdown_streams=200)
    return Scale(False, load_clients=400, load_waves=1, storm_clients=120, fuzz_examples=25, shutdown_streams=48)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    target, draft = make_tiny_pair(tmp_path_factory.mktemp("tiny_rel"))
    for d in (target, draft):  # rope needs no weights per position: a longer context is a config change
        cfg = json.loads((d / "config.json").read_text())
        cfg["max_position_embeddings"] = MAX_MODEL_LEN
        (d / "config.json").write_text(json.dumps(cfg))
    return target, draft


def server_args(target: Path, *extra: object) -> list[object]:
    """A small server: few slots and a bounded queue, so load turns into queueing and 429s quickly."""
    return ["--model", target, "--speculative-method", "ngram", "--served-model-name", MODEL, "--dtype", "float32",
            "--max-num-seqs", NUM_SLOTS, "--max-queue", MAX_QUEUE, "--max-model-len", MAX_MODEL_LEN, *extra]


@pytest.fixture(scope="session")
def server(tiny_pair):
    """The shared server of the load, storm and hostile-input tests (each leaves it idle for the next)."""
    proc = ServerProcess(*server_args(tiny_pair[0]), env={"OMP_NUM_THREADS": "1"}).start()
    yield proc
    proc.stop()
