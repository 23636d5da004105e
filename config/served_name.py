"""The model name clients use (`model` in requests, responses and metric labels), written once: the engine's builder
names the engine with it, and the server labels metrics with it before the engine has loaded."""

from __future__ import annotations

from pathlib import Path

from config.settings import ModelSettings

DEFAULT_SERVED_NAME = "specserve-demo"  # the embedded default pair (no --model)


def served_model_name(model: ModelSettings) -> str:
    """--served-model-name if given, else the model path's last part, else the embedded default's name."""
    if model.served_model_name:
        return model.served_model_name
    if model.model:
        return Path(str(model.model).rstrip("/")).name
    return DEFAULT_SERVED_NAME
