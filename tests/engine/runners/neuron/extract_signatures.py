"""Regenerate `real_signatures.json` from the real library sources (run by hand where the repositories are cloned).

    python -m tests.engine.runners.neuron.extract_signatures TNX_GIT_DIR NXDI_GIT_DIR > real_signatures.json

It reads each file at a pinned commit with `git show COMMIT:PATH` and parses it with `ast` (nothing is imported), so it
records exactly what the released code declares: parameter names, kinds and default expressions, and for
`**kwargs`-only constructors the keys the body pops. The tests compare the fakes and the runners' calls against it.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

TNX = {"package": "transformers-neuronx", "version": "0.13.x", "commit": "1ade6d7",
       "note": "last public sync (Dec 12 2024), the code SDK 2.25's transformers-neuronx 0.13 ships"}
NXDI = [{"package": "neuronx-distributed-inference", "version": "0.8.0", "commit": "cd3abf3",
         "note": "Neuron SDK 2.28, the last release supporting trn1/inf2"},
        {"package": "neuronx-distributed-inference", "version": "0.9.0", "commit": "c63afe0",
         "note": "Neuron SDK 2.29"}]

# qualified name used by the fakes -> (file in the repository, class name or None, function name)
TNX_CALLABLES = {
    "transformers_neuronx.llama.model.LlamaForSampling.__init__":
        ("src/transformers_neuronx/llama/model.py", "LlamaForSampling", "__init__"),
    "transformers_neuronx.llama.model.LlamaForSampling.from_pretrained":
        ("src/transformers_neuronx/module.py", "PretrainedModel", "from_pretrained"),
    "transformers_neuronx.llama.model.LlamaForSampling.forward":
        ("src/transformers_neuronx/llama/model.py", "LlamaForSampling", "forward"),
    "transformers_neuronx.llama.model.LlamaForSampling.speculative_forward":
        ("src/transformers_neuronx/llama/model.py", "LlamaForSampling", "speculative_forward"),
    "transformers_neuronx.llama.model.LlamaForSampling.enable_speculative_decoder":
        ("src/transformers_neuronx/base.py", "NeuronModelBase", "enable_speculative_decoder"),
    "transformers_neuronx.llama.model.LlamaForSampling.to_neuron":
        ("src/transformers_neuronx/base.py", "NeuronModelBase", "to_neuron"),
    "transformers_neuronx.llama.model.LlamaForSampling.save":
        ("src/transformers_neuronx/base.py", "NeuronModelBase", "save"),
    "transformers_neuronx.llama.model.LlamaForSampling.load":
        ("src/transformers_neuronx/base.py", "NeuronModelBase", "load"),
    "transformers_neuronx.config.NeuronConfig.__init__":
        ("src/transformers_neuronx/config.py", "NeuronConfig", "__init__"),
    "transformers_neuronx.config.ContinuousBatchingConfig.__init__":
        ("src/transformers_neuronx/config.py", "ContinuousBatchingConfig", "__init__"),
    "transformers_neuronx.config.GenerationConfig.__init__":
        ("src/transformers_neuronx/config.py", "GenerationConfig", "__init__"),
    "transformers_neuronx.fused_speculation.FusedSpeculativeDecoder.__init__":
        ("src/transformers_neuronx/fused_speculation.py", "FusedSpeculativeDecoder", "__init__"),
    "transformers_neuronx.fused_speculation.FusedSpeculativeDecoder.to_neuron":
        ("src/transformers_neuronx/fused_speculation.py", "FusedSpeculativeDecoder", "to_neuron"),
    "transformers_neuronx.fused_speculation.FusedSpeculativeDecoder.speculative_iteration":
        ("src/transformers_neuronx/fused_speculation.py", "FusedSpeculativeDecoder", "speculative_iteration"),
}
_N = "src/neuronx_distributed_inference/"
NXDI_CALLABLES = {
    "neuronx_distributed_inference.models.config.NeuronConfig.__init__":
        (_N + "models/config.py", "NeuronConfig", "__init__"),
    "neuronx_distributed_inference.models.llama.modeling_llama.LlamaInferenceConfig.__init__":
        (_N + "models/config.py", "InferenceConfig", "__init__"),
    "neuronx_distributed_inference.models.llama.modeling_llama.NeuronLlamaForCausalLM.__init__":
        (_N + "models/application_base.py", "NeuronApplicationBase", "__init__"),
    "neuronx_distributed_inference.models.llama.modeling_llama.NeuronLlamaForCausalLM.compile":
        (_N + "models/application_base.py", "NeuronApplicationBase", "compile"),
    "neuronx_distributed_inference.models.llama.modeling_llama.NeuronLlamaForCausalLM.load":
        (_N + "models/application_base.py", "NeuronApplicationBase", "load"),
    "neuronx_distributed_inference.models.llama.modeling_llama.NeuronLlamaForCausalLM.forward":
        (_N + "models/model_base.py", "NeuronBaseForCausalLM", "forward"),
    "neuronx_distributed_inference.utils.hf_adapter.load_pretrained_config":
        (_N + "utils/hf_adapter.py", None, "load_pretrained_config"),
}
# constructors that take **kwargs and pop named keys from them
POPPED = {"transformers_neuronx.config.ContinuousBatchingConfig.__init__",
          "neuronx_distributed_inference.models.config.NeuronConfig.__init__"}


def _show(git_dir: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "-C", git_dir, "show", f"{commit}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def _find(tree: ast.Module, cls: str | None, fn: str) -> ast.FunctionDef:
    scope = tree.body
    if cls is not None:
        scope = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    return next(n for n in scope if isinstance(n, ast.FunctionDef) and n.name == fn)


def _params(f: ast.FunctionDef) -> list[list]:
    """[[name, kind, default source or None], ...] in declaration order (inspect.Parameter kind names)."""
    a = f.args
    out: list[list] = []
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    for arg, d in zip(pos, defaults, strict=True):
        kind = "POSITIONAL_ONLY" if arg in a.posonlyargs else "POSITIONAL_OR_KEYWORD"
        out.append([arg.arg, kind, None if d is None else ast.unparse(d)])
    if a.vararg:
        out.append([a.vararg.arg, "VAR_POSITIONAL", None])
    for arg, d in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append([arg.arg, "KEYWORD_ONLY", None if d is None else ast.unparse(d)])
    if a.kwarg:
        out.append([a.kwarg.arg, "VAR_KEYWORD", None])
    return out


def extract(git_dir: str, commit: str, table: dict) -> dict:
    out = {}
    for qual, (path, cls, fn) in table.items():
        src = _show(git_dir, commit, path)
        f = _find(ast.parse(src), cls, fn)
        entry = {"file": path, "line": f.lineno, "params": _params(f)}
        if qual in POPPED:
            body = ast.get_source_segment(src, f) or ""
            entry["popped_kwargs"] = sorted(set(re.findall(r'kwargs\.pop\(\s*"(\w+)"', body)))
        out[qual] = entry
    return out


def main(tnx_dir: str, nxdi_dir: str) -> None:
    data = {"transformers_neuronx": [{**TNX, "callables": extract(tnx_dir, TNX["commit"], TNX_CALLABLES)}],
            "neuronx_distributed_inference": [{**v, "callables": extract(nxdi_dir, v["commit"], NXDI_CALLABLES)}
                                              for v in NXDI]}
    json.dump(data, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
