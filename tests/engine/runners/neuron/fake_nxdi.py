"""Executable model of NxD Inference's documented continuous-batching contract (NOT the library).

`install(monkeypatch)` puts it in `sys.modules` as `neuronx_distributed_inference` (+ `.models.config`,
`.models.llama.modeling_llama`, `.utils.hf_adapter`). It implements the calls `engine/runners/neuron_nxdi.py` makes on
top of the project's torch model, and enforces what NxDI's `NeuronBaseForCausalLM.forward` / model wrappers do:

- `compile(dir)` writes artifacts; `load(dir)` needs artifacts compiled for the same NeuronConfig; calls need `load`.
- routing by shape: n > 1 tokens with `position_ids.min() == 0` -> context encoding (batch `ctx_batch_size` = 1,
  n <= `max_context_length`, last-token logits (1, 1, V)); n == `speculation_length` -> speculation graph; n == 1 ->
  token generation; anything else has no graph.
- token generation and speculation run `tkg_batch_size` rows. Fewer rows are padded the way `_forward_with_pad` does:
  the first row's inputs are repeated into the missing `seq_ids`, so a running slot left out of the call gets the
  first row's token written at the first row's positions — the hazard a runner must avoid by listing every slot.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.engine.runners.neuron.contract_model import ContractViolation, SlotModel

COMPILES: list[str] = []


class NeuronConfig:
    def __init__(self, **kwargs):
        required = {"tp_degree", "batch_size", "seq_len", "is_continuous_batching"}
        if missing := required - kwargs.keys():
            raise ContractViolation(f"NeuronConfig missing {sorted(missing)}")
        self.__dict__.update(kwargs)
        self.kwargs = kwargs


def load_pretrained_config(path):
    def load_config(config):
        config.hf = json.loads((Path(path) / "config.json").read_text())
    return load_config


class LlamaInferenceConfig:
    def __init__(self, neuron_config, load_config=None):
        self.neuron_config = neuron_config
        if load_config is not None:
            load_config(self)


@dataclass
class CausalLMOutputWithPast:
    logits: torch.Tensor


class NeuronLlamaForCausalLM:
    def __init__(self, model_path, config: LlamaInferenceConfig):
        self.path, self.config = str(model_path), config
        nc = config.neuron_config
        if not nc.is_continuous_batching or nc.ctx_batch_size != 1 or nc.tkg_batch_size != nc.batch_size:
            raise ContractViolation("continuous batching: ctx_batch_size 1, tkg_batch_size == batch_size")
        self.nc = nc
        self.slots: SlotModel | None = None

    def _key(self) -> str:
        cfg = {"hf": Path(self.path, "config.json").read_text(),
               "nc": {k: str(v) for k, v in self.nc.kwargs.items()}}
        return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:20]

    def compile(self, compiled_model_path):
        COMPILES.append(self._key())
        Path(compiled_model_path).mkdir(parents=True, exist_ok=True)
        (Path(compiled_model_path) / "model.pt").write_text(self._key())

    def load(self, compiled_model_path):
        f = Path(compiled_model_path) / "model.pt"
        if not f.is_file() or f.read_text() != self._key():
            raise FileNotFoundError(f"no model compiled for this configuration in {compiled_model_path}")
        self.slots = SlotModel(self.path, self.nc.batch_size, self.nc.seq_len)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, seq_ids=None, sampling_params=None):
        return self.forward(input_ids, attention_mask, position_ids, seq_ids, sampling_params)

    def forward(self, input_ids, attention_mask=None, position_ids=None, seq_ids=None, sampling_params=None):
        if self.slots is None:
            raise ContractViolation("load() the compiled model first")
        if input_ids.dim() != 2 or position_ids is None or seq_ids is None or attention_mask is None:
            raise ContractViolation("forward needs 2-D input_ids, attention_mask, position_ids and seq_ids")
        if position_ids.shape != input_ids.shape or attention_mask.shape[0] != input_ids.shape[0]:
            raise ContractViolation("input_ids, attention_mask and position_ids disagree on shape")
        rows, n = input_ids.shape
        if seq_ids.shape != (rows,):
            raise ContractViolation(f"seq_ids must be ({rows},), got {tuple(seq_ids.shape)}")
        if n > 1 and int(position_ids.min()) == 0:
            if rows != self.nc.ctx_batch_size:
                raise ContractViolation(f"context encoding runs batch {self.nc.ctx_batch_size}, got {rows}")
            if n > self.nc.max_context_length:
                raise ContractViolation(f"prompt of {n} tokens exceeds max_context_length {self.nc.max_context_length}")
            if position_ids[0].tolist() != list(range(n)):
                raise ContractViolation("context encoding positions must be 0..n-1")
            return CausalLMOutputWithPast(self.slots.run(input_ids, position_ids, seq_ids)[:, -1:])
        if n != 1 and n != self.nc.speculation_length:
            raise ContractViolation(f"no graph for {n} tokens at non-zero positions (speculation_length "
                                    f"{self.nc.speculation_length})")
        B = self.nc.tkg_batch_size  # noqa: N806
        if rows > B:
            raise ContractViolation(f"{rows} rows exceed tkg_batch_size {B}")
        listed = seq_ids.long().tolist()
        missing = [s for s in range(B) if s not in listed]
        # _forward_with_pad: repeat the first row into the seq_ids the call did not list.
        ids = torch.cat([input_ids.long(), input_ids[:1].long().repeat(len(missing), 1)])
        pos = torch.cat([position_ids.long(), position_ids[:1].long().repeat(len(missing), 1)])
        logits = self.slots.run(ids, pos, torch.tensor(listed + missing))
        return CausalLMOutputWithPast(logits[:rows])


def install(monkeypatch) -> None:
    """Register the fake as `neuronx_distributed_inference` for the duration of a test."""
    COMPILES.clear()
    names = ["neuronx_distributed_inference", "neuronx_distributed_inference.models",
             "neuronx_distributed_inference.models.config", "neuronx_distributed_inference.models.llama",
             "neuronx_distributed_inference.models.llama.modeling_llama", "neuronx_distributed_inference.utils",
             "neuronx_distributed_inference.utils.hf_adapter"]
    mods = {n: types.ModuleType(n) for n in names}
    mods["neuronx_distributed_inference.models.config"].NeuronConfig = NeuronConfig
    ml = mods["neuronx_distributed_inference.models.llama.modeling_llama"]
    ml.NeuronLlamaForCausalLM, ml.LlamaInferenceConfig = NeuronLlamaForCausalLM, LlamaInferenceConfig
    mods["neuronx_distributed_inference.utils.hf_adapter"].load_pretrained_config = load_pretrained_config
    for name, mod in mods.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(mods[parent], child, mod)
        monkeypatch.setitem(sys.modules, name, mod)
