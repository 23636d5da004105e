"""Tokenizer loading: `transformers.AutoTokenizer` from the same directory or hub id as the model."""

from __future__ import annotations

import os

from engine.models.loader import resolve_model_path


class TokenizerNotFoundError(FileNotFoundError):
    """The model directory has no tokenizer files AutoTokenizer can read."""


def load_tokenizer(path_or_id: str | os.PathLike):
    """Return a `PreTrainedTokenizerBase` for a local checkpoint directory or hub id."""
    from transformers import AutoTokenizer

    path = resolve_model_path(path_or_id)
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise TokenizerNotFoundError(
            f"no usable tokenizer in {path} (expected tokenizer.json or tokenizer_config.json + vocab): {e}") from e
