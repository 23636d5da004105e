"""Backend name -> runner factory. `auto` picks the first backend whose `available()` says yes, else torch.

A factory takes (model path, RunnerSpec) and returns a Runner. Neuron backends register themselves from their own
modules; the engine never branches on the backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.runners.base import Runner
from engine.runners.options import NeuronOptions, TorchOptions


@dataclass(frozen=True)
class RunnerSpec:
    max_slots: int
    max_model_len: int
    dtype: str = "auto"
    device: str = "auto"
    role: str = "target"  # "target" or "draft": Neuron runners compile them differently
    torch: TorchOptions = field(default_factory=TorchOptions)  # read by the torch backend only
    neuron: NeuronOptions = field(default_factory=NeuronOptions)  # read by the Neuron backends only


@dataclass
class Backend:
    name: str
    build: Callable[[str, RunnerSpec], Runner]
    available: Callable[[], str | None]  # None = usable here; else a message naming what is missing


BACKENDS: dict[str, Backend] = {}
# Modules that register optional backends when imported (they must import without their libraries installed).
OPTIONAL_BACKEND_MODULES = ("engine.runners.neuron_tnx", "engine.runners.neuron_nxdi")
AUTO_ORDER = ("neuron-tnx", "neuron-nxdi", "torch")


def register_backend(backend: Backend) -> None:
    BACKENDS[backend.name] = backend


def _load_optional() -> None:
    for mod in OPTIONAL_BACKEND_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


def resolve_backend(name: str) -> Backend:
    """The backend to use for `name`; a forced backend that cannot run here raises with what is missing."""
    _load_optional()
    if name == "auto":
        for candidate in AUTO_ORDER:
            b = BACKENDS.get(candidate)
            if b is not None and b.available() is None:
                return b
        return BACKENDS["torch"]
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(sorted(BACKENDS))}")
    b = BACKENDS[name]
    missing = b.available()
    if missing is not None:
        raise RuntimeError(f"backend {name!r} cannot run here: {missing}")
    return b


def _build_torch(path: str, spec: RunnerSpec) -> Runner:
    from engine.runners.torch_runner import TorchRunner

    return TorchRunner.from_pretrained(path, max_slots=spec.max_slots, max_model_len=spec.max_model_len,
                                       dtype=spec.dtype, device=spec.device, compile=spec.torch.compile,
                                       compile_cache_dir=spec.torch.compile_cache_dir,
                                       batch_invariant=spec.torch.batch_invariant, native=spec.torch.native,
                                       draft_vocab=spec.role == "draft")


register_backend(Backend("torch", _build_torch, lambda: None))
