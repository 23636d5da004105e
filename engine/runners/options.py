"""Per-backend runner options: typed, one small dataclass per backend, carried in `RunnerSpec` (no untyped bag).

The builder fills them from `Settings` (engine.builder.torch_options / neuron_options); each backend reads only its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TorchOptions:
    """The torch backend's (engine.runners.torch_runner)."""

    compile: bool = False  # torch.compile the decode/verify step per batch bucket
    compile_cache_dir: str | None = None  # torch.compile's persistent caches
    batch_invariant: bool | None = None  # None: on for bf16 on CPU without compile (torch_runner.py)
    native: bool = True  # the hand-written CPU kernels (engine/native) where they build and the path is invariant


@dataclass(frozen=True)
class NeuronOptions:
    """The `neuron` settings section as the Neuron runners (neuron-tnx, neuron-nxdi) see it."""

    tp_degree: int = 1
    compiled_dir: str | None = None
    context_buckets: tuple[int, ...] | None = None
    token_buckets: tuple[int, ...] | None = None
    k_values: tuple[int, ...] = ()
    fused_speculation: bool = False
    draft_model: str | None = None  # fused mode: the draft the target fuses with
