"""Shared fixtures: tiny random-init checkpoint directories (built once per session) and engine factories."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny_models import make_tiny_pair


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(target dir, draft dir): 2-layer random Llama target, 1-layer draft sharing its first layer, one tokenizer."""
    return make_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))
