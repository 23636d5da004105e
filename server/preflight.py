"""Checks `specserve serve` makes before it binds its port: model paths and backend availability.

What fails here is a mistake in the command line (a path that is not there, a directory without `config.json`, a
Neuron backend on a machine without its library), so it is reported as one line naming the setting, exit status 2,
in well under a second, instead of "listening on ..." followed by a load failure. What can only fail while loading
(bad weights, an unsupported architecture, a hub id that cannot be downloaded) stays behind `/health` 503, so an
orchestrator sees the load progress.
"""

from __future__ import annotations

from pathlib import Path

from config.settings import Settings


class PreflightError(ValueError):
    """A setting that cannot work on this machine; the message starts with the flag it names."""


def looks_like_path(value: str) -> bool:
    """A local path rather than a Hugging Face hub id (`org/name` or `name`): it exists, starts like a path, or has
    more than one `/` (hub ids have at most one). The same rule as `engine.models.loader.resolve_model_path`."""
    return Path(value).expanduser().exists() or value.startswith((".", "/", "~")) or value.count("/") > 1


def check_model_path(flag: str, value: str) -> None:
    """A model given as a local path must be a checkpoint directory with `config.json`, or a `.gguf` file."""
    if not looks_like_path(value):
        return  # a hub id: resolved (downloaded or found in the HF cache) while loading
    p = Path(value).expanduser()
    if not p.exists():
        raise PreflightError(f"{flag} {value}: no such file or directory")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise PreflightError(f"{flag} {value}: is a file but not a .gguf file; give a checkpoint directory "
                                 "(with config.json) or a .gguf file")
        return
    if not (p / "config.json").is_file():
        raise PreflightError(f"{flag} {value}: directory has no config.json (not a Hugging Face checkpoint)")


def check_default_model() -> None:
    """No --model: the embedded default's package must be installed (a metadata lookup, no import of torch)."""
    from engine.default_model.locate import DefaultModelMissingError, gguf_path

    try:
        gguf_path()
    except DefaultModelMissingError as e:
        raise PreflightError(f"--model not given: {e}") from None


def check_tokenizer_path(value: str) -> None:
    if looks_like_path(value) and not Path(value).expanduser().exists():
        raise PreflightError(f"--tokenizer {value}: no such file or directory")


def check_backend(name: str) -> None:
    """A forced Neuron backend must have its library and a device here; `auto` and `torch` always can run."""
    if name in ("auto", "torch"):
        return
    # Imported only for a forced Neuron backend: the runner modules pull in torch (~2 s).
    from engine.runners.registry import BACKENDS, _load_optional

    _load_optional()
    backend = BACKENDS.get(name)
    if backend is None:
        raise PreflightError(f"--backend {name}: this installation has no {name} runner")
    missing = backend.available()
    if missing is not None:
        raise PreflightError(f"--backend {name}: cannot run here: {missing}")


def preflight(settings: Settings) -> None:
    """Raise `PreflightError` for the first setting that cannot work; return quietly otherwise."""
    m = settings.model
    if m.model is not None:
        check_model_path("--model", m.model)
    if m.draft_model is not None:
        check_model_path("--draft-model", m.draft_model)
    if m.tokenizer is not None:
        check_tokenizer_path(m.tokenizer)
    check_backend(settings.engine.backend)
    if m.model is None:
        check_default_model()
