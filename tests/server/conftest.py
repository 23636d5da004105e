"""Fixtures: one tiny target/draft pair per session, one main server per session (speculation with the draft model
at a static K, an API key, small limits so the limit errors are cheap to trigger)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.tiny_models import make_tiny_pair
from tests.server.server_proc import ServerProcess

API_KEY = "sk-test-key"
MODEL = "tiny"
LONG_LEN = 4096  # max_model_len of the servers: lets a request run for seconds (disconnect, queue, drain tests)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    target, draft = make_tiny_pair(tmp_path_factory.mktemp("tiny"))
    for d in (target, draft):  # rope needs no weights per position: a longer context is a config change
        cfg = json.loads((d / "config.json").read_text())
        cfg["max_position_embeddings"] = LONG_LEN
        (d / "config.json").write_text(json.dumps(cfg))
    return target, draft


@pytest.fixture(scope="session")
def server(tiny_pair):
    target, draft = tiny_pair
    proc = ServerProcess(
        # static K: speculation stats are never zero because the adaptive policy judged drafting not worth it
        "--model", target, "--draft-model", draft, "--speculative-method", "draft", "--speculative-policy", "static",
        "--served-model-name", MODEL,
        "--dtype", "float32", "--max-num-seqs", "4", "--max-n", "4", "--max-body-bytes", "65536",
        "--max-model-len", LONG_LEN, api_key=API_KEY,
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def client(server):
    return server.client()
