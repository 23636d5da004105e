"""Tokenizer loading: `transformers.AutoTokenizer` from the same directory or hub id as the model.

A directory is checked for tokenizer files before AutoTokenizer sees it: without them AutoTokenizer's behaviour
differs by version and misleads (transformers 4.57 guesses the model type from the directory *name*, matches "mpt"
inside "empty", and ends in `ImportError: ... requires the protobuf library` or an AttributeError). Whatever
AutoTokenizer raises on a directory that has tokenizer files is reported with the directory and the version.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.models.loader import resolve_model_path

# Any of these lets some AutoTokenizer class load (fast tokenizer, slow BPE/WordPiece/SentencePiece, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")


class TokenizerNotFoundError(FileNotFoundError):
    """The model directory has no tokenizer files AutoTokenizer can read."""


class TokenizerLoadError(RuntimeError):
    """The directory has tokenizer files, but the installed transformers could not load them."""


def has_tokenizer_files(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_FILES) or any(path.glob("*.tiktoken"))


def load_tokenizer(path_or_id: str | os.PathLike):
    """Return a `PreTrainedTokenizerBase` for a local checkpoint directory or hub id."""
    import transformers

    path = resolve_model_path(path_or_id)
    if not has_tokenizer_files(path):
        raise TokenizerNotFoundError(
            f"no tokenizer files in {path} (expected one of {', '.join(TOKENIZER_FILES)}); "
            "pass --tokenizer or copy the tokenizer files next to the weights")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - ImportError, AttributeError, OSError, ValueError all seen across versions
        raise TokenizerLoadError(
            f"could not load the tokenizer in {path} with transformers {transformers.__version__}: "
            f"{type(e).__name__}: {e}") from e
