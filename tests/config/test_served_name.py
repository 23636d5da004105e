"""The served-name rule, written once (config.served_name): the engine builder and the server's pre-load metrics
labels use the same function, so a refusal while loading carries the name the loaded engine will answer to."""

from __future__ import annotations

import pytest

from config.loader import load_settings
from config.served_name import DEFAULT_SERVED_NAME, served_model_name


@pytest.mark.parametrize("cli,name", [
    ({}, DEFAULT_SERVED_NAME),
    ({"served_model_name": "mine"}, "mine"),
    ({"model": "/models/SmolLM2-360M/"}, "SmolLM2-360M"),  # a trailing slash does not make the name empty
    ({"model": "org/some-model.gguf", "served_model_name": "x"}, "x"),
])
def test_rule(cli, name):
    assert served_model_name(load_settings(cli, environ={}).model) == name


def test_builder_names_the_engine_with_the_same_rule(tmp_path):
    from engine.builder import resolve_models  # with --model given it resolves names without loading anything

    settings = load_settings({"model": str(tmp_path / "ckpt"), "speculative_method": "none"}, environ={})
    assert resolve_models(settings)[2] == served_model_name(settings.model) == "ckpt"


def test_default_model_name_is_the_rules_default():
    from engine.default_model import SERVED_NAME

    assert SERVED_NAME == DEFAULT_SERVED_NAME == "specserve-demo"
