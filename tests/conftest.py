"""Shared fixtures: tiny random-init checkpoint directories (built once per session) and engine factories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny_models import make_tiny_pair

# Tests run beside server subprocesses on a 2-core machine: with several processes each spinning 2 OpenMP threads the
# tiny models' ops slow down ~10x (barrier waits). One intra-op thread per process, inherited by subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(target dir, draft dir): 2-layer random Llama target, 1-layer draft sharing its first layer, one tokenizer."""
    return make_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))
