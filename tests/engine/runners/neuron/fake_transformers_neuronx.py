"""Executable model of transformers-neuronx's documented continuous-batching contract (NOT the library).

`install(monkeypatch)` puts it in `sys.modules` as `transformers_neuronx` (+ `.config`, `.llama.model`,
`.fused_speculation`). It implements the calls `engine/runners/neuron_tnx.py` makes, on top of the project's torch model,
and enforces what the real library (0.13, `base.py`) enforces or silently mishandles:

- `to_neuron()` before any call; `enable_speculative_decoder` and `load` only before it; `load(dir)` needs the
  artifacts `save(dir)` wrote for the same configuration (else FileNotFoundError, like `set_neff_bytes`).
- context encoding (`forward` with n > 1 tokens whose first cache id is 0): batch 1 (`context_batch_sizes = [1]`),
  n <= the largest `context_length_estimate`, cache ids 0..n-1. Returns (1, V) last-token logits.
- token generation (`forward` with one token per row): at most `batch_size` rows; every compiled slot the call does not
  list gets token 0 written at cache position 0 (`_prepare_for_continuous_batching` zero-fills the full batch) —
  the hazard that corrupts a running sequence left out of a decode call. Returns (rows, V) in the listed order.
- `speculative_forward`: exactly `batch_size` rows, `speculation_length` among the compiled ones and equal to the
  tokens per row, first cache id > 0 (else the library routes the call to context encoding). Returns (m, V, B).
- `FusedSpeculativeDecoder(draft, target, k).speculative_iteration(ids (B, 1), cache_ids, start_ids)` -> (tokens
  (B, k+1), counts (B,)): greedy draft of k tokens, target verify of k+1, accepted prefix plus the target's next token.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import torch

from tests.engine.runners.neuron.contract_model import ContractViolation, SlotModel

COMPILES: list[str] = []  # one entry per compile (to_neuron without loaded artifacts): tests count cache misses


class ContinuousBatchingConfig:
    def __init__(self, batch_size_for_shared_caches: int):
        self.batch_size_for_shared_caches = batch_size_for_shared_caches


class NeuronConfig:
    def __init__(self, continuous_batching: ContinuousBatchingConfig | None = None, **kwargs):
        self.continuous_batching = continuous_batching
        self.extra = kwargs


class LlamaForSampling:
    @classmethod
    def from_pretrained(cls, path, *, batch_size, n_positions, context_length_estimate, tp_degree, amp,
                        neuron_config):
        return cls(str(path), batch_size, n_positions, context_length_estimate, tp_degree, amp, neuron_config)

    def __init__(self, path, batch_size, n_positions, context_length_estimate, tp_degree, amp, neuron_config):
        cb = neuron_config.continuous_batching
        if cb is None or cb.batch_size_for_shared_caches != batch_size:
            raise ContractViolation("continuous batching needs batch_size_for_shared_caches == batch_size")
        if amp not in ("f32", "bf16", "f16"):
            raise ContractViolation(f"unknown amp {amp!r}")
        self.path, self.batch_size, self.tp_degree, self.amp = path, batch_size, tp_degree, amp
        self.n_positions = sorted(n_positions) if isinstance(n_positions, list) else [n_positions]
        ctx = context_length_estimate
        self.context_buckets = sorted(ctx) if isinstance(ctx, list) else [ctx]
        self.speculation_lengths: set[int] = set()
        self.loaded_from: str | None = None
        self.compiled = False
        self.slots: SlotModel | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def enable_speculative_decoder(self, speculation_length):
        if self.compiled:
            raise ContractViolation("enable_speculative_decoder must be called before to_neuron")
        lengths = [speculation_length] if isinstance(speculation_length, int) else list(speculation_length)
        self.speculation_lengths.update(lengths)

    def _key(self) -> str:
        cfg = {"path": Path(self.path, "config.json").read_text(), "b": self.batch_size, "n": self.n_positions,
               "ctx": self.context_buckets, "spec": sorted(self.speculation_lengths), "tp": self.tp_degree,
               "amp": self.amp}
        return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:20] + ".neff"

    def load(self, directory):
        if self.compiled:
            raise ContractViolation("load must be called before to_neuron")
        self.loaded_from = str(directory)

    def to_neuron(self):
        if self.loaded_from is not None:
            if not (Path(self.loaded_from) / self._key()).is_file():
                raise FileNotFoundError("Could not find a matching NEFF for your HLO in this directory.")
        else:
            COMPILES.append(self._key())
        self.slots = SlotModel(self.path, self.batch_size, max(self.n_positions))
        self.compiled = True

    def save(self, directory):
        if not self.compiled:
            raise ContractViolation("cannot save a model which has not been successfully compiled")
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / self._key()).write_text("neff")

    # -- calls -------------------------------------------------------------------------------------------------------

    def _check(self, input_ids, cache_ids, start_ids):
        if not self.compiled:
            raise ContractViolation("call to_neuron() first")
        if input_ids.dim() != 2 or cache_ids is None or start_ids is None:
            raise ContractViolation("continuous batching needs 2-D input_ids, cache_ids and start_ids")
        if tuple(cache_ids.shape) != tuple(input_ids.shape) or tuple(start_ids.shape) != (input_ids.shape[0],):
            raise ContractViolation(f"shapes: input_ids {tuple(input_ids.shape)}, cache_ids {tuple(cache_ids.shape)}, "
                                    f"start_ids {tuple(start_ids.shape)}")

    def forward(self, input_ids, cache_ids=None, start_ids=None):
        self._check(input_ids, cache_ids, start_ids)
        rows, n = input_ids.shape
        if n > 1:
            if int(cache_ids.flatten()[0]) != 0:
                raise ContractViolation("forward() with several tokens at a non-zero position is not a documented "
                                        "path; use speculative_forward")
            if rows != 1:
                raise ContractViolation(f"context encoding runs batch 1 under continuous batching, got {rows}")
            if n > self.context_buckets[-1]:
                raise ContractViolation(f"invalid input prompt length ({n} > {self.context_buckets[-1]})")
            if cache_ids[0].tolist() != list(range(n)):
                raise ContractViolation("context encoding cache ids must be 0..n-1")
            return self.slots.run(input_ids, cache_ids, start_ids)[:, -1]  # (1, V)
        if rows > self.batch_size:
            raise ContractViolation(f"{rows} rows exceed the compiled batch size {self.batch_size}")
        listed = start_ids.long().tolist()
        # Token generation always runs the full compiled batch: unlisted slots get token 0 at cache position 0.
        full_ids = torch.zeros(self.batch_size, 1, dtype=torch.long)
        full_pos = torch.zeros(self.batch_size, 1, dtype=torch.long)
        if len(set(listed)) != len(listed):
            raise ContractViolation(f"start_ids must be distinct, got {listed}")
        for r, slot in enumerate(listed):
            full_ids[slot], full_pos[slot] = input_ids[r], cache_ids[r]
        logits = self.slots.run(full_ids, full_pos, torch.arange(self.batch_size))[:, 0]  # (B, V)
        return logits[torch.tensor(listed)]

    def speculative_forward(self, input_ids, cache_ids=None, start_ids=None, speculation_length=None):
        self._check(input_ids, cache_ids, start_ids)
        rows, m = input_ids.shape
        if speculation_length not in self.speculation_lengths or m != speculation_length:
            raise ContractViolation(f"no speculation graph for {m} tokens (speculation_length={speculation_length}, "
                                    f"compiled {sorted(self.speculation_lengths)})")
        if rows != self.batch_size:
            raise ContractViolation(f"invalid batch size for speculative forward ({rows} != {self.batch_size})")
        if int(cache_ids.flatten()[0]) == 0:
            raise ContractViolation("first cache id 0: the library would route this call to context encoding")
        logits = self.slots.run(input_ids, cache_ids, start_ids)  # (B, m, V)
        return logits.permute(1, 2, 0)  # (m, V, B), as base.py returns it


class FusedSpeculativeDecoder:
    def __init__(self, draft_model: LlamaForSampling, target_model: LlamaForSampling, k: int):
        self.draft, self.target, self.k = draft_model, target_model, k
        self.compiled = False

    def load(self, directory):
        self.target.load(directory)
        self.draft.load(directory)

    def save(self, directory):
        self.target.save(directory)
        self.draft.save(directory)

    def to_neuron(self):
        self.draft.to_neuron()
        self.target.to_neuron()
        self.compiled = True

    def speculative_iteration(self, input_ids, cache_ids, start_ids):
        if not self.compiled:
            raise ContractViolation("call to_neuron() first")
        B = self.target.batch_size  # noqa: N806
        if tuple(input_ids.shape) != (B, 1) or tuple(start_ids.shape) != (B,):
            raise ContractViolation(f"fused iteration runs the full batch of {B} rows, one token each")
        slots = start_ids.long()
        pos = cache_ids.long().view(B, 1)
        tok = input_ids.long().view(B, 1)
        drafts = []
        # Draft k tokens greedily, then feed the last one too so the draft cache covers every accepted position.
        for j in range(self.k + 1):
            logits = self.draft.slots.run(tok, pos + j, slots)[:, 0]
            tok = logits.argmax(-1, keepdim=True)
            if j < self.k:
                drafts.append(tok)
        drafts = torch.cat(drafts, dim=1)  # (B, k)
        verify_ids = torch.cat([input_ids.long().view(B, 1), drafts], dim=1)  # (B, k+1)
        verify_pos = pos + torch.arange(self.k + 1)
        target = self.target.slots.run(verify_ids, verify_pos, slots).argmax(-1)  # (B, k+1)
        match = (drafts == target[:, :-1]).long().cumprod(dim=1)
        accepted = match.sum(dim=1)  # (B,)
        tokens = target.clone()  # accepted drafts equal the target's tokens; the next one is the target's
        counts = accepted + 1
        return tokens, counts


def install(monkeypatch) -> None:
    """Register the fake as `transformers_neuronx` for the duration of a test."""
    COMPILES.clear()
    root = types.ModuleType("transformers_neuronx")
    root.__version__ = "0.13-contract-model"
    config = types.ModuleType("transformers_neuronx.config")
    config.NeuronConfig, config.ContinuousBatchingConfig = NeuronConfig, ContinuousBatchingConfig
    llama = types.ModuleType("transformers_neuronx.llama")
    llama_model = types.ModuleType("transformers_neuronx.llama.model")
    llama_model.LlamaForSampling = LlamaForSampling
    fused = types.ModuleType("transformers_neuronx.fused_speculation")
    fused.FusedSpeculativeDecoder = FusedSpeculativeDecoder
    root.config, root.llama, root.fused_speculation, llama.model = config, llama, fused, llama_model
    for name, mod in [("transformers_neuronx", root), ("transformers_neuronx.config", config),
                      ("transformers_neuronx.llama", llama), ("transformers_neuronx.llama.model", llama_model),
                      ("transformers_neuronx.fused_speculation", fused)]:
        monkeypatch.setitem(sys.modules, name, mod)
