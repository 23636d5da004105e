"""The fakes and the runners against the signatures recorded from the real sources (real_signatures.json, written by
extract_signatures.py from transformers-neuronx 1ade6d7 and NxD Inference cd3abf3 / c63afe0):

(a) every fake callable declares the real parameters (names, kinds, literal defaults);
(b) every call the runners make (recorded by the fakes while building and serving) binds to the real signature of
    every pinned version, with no keyword swallowed by a `**kwargs` it does not belong to: a misspelled keyword fails.
"""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

from engine.runners import neuron_nxdi, neuron_tnx
from engine.runners.base import ForwardBatch
from engine.runners.options import NeuronOptions
from engine.runners.registry import RunnerSpec
from tests.engine.runners.neuron import contract_model, fake_nxdi, fake_transformers_neuronx

SIGS = json.loads((Path(__file__).parent / "real_signatures.json").read_text())
KINDS = {"POSITIONAL_ONLY": inspect.Parameter.POSITIONAL_ONLY,
         "POSITIONAL_OR_KEYWORD": inspect.Parameter.POSITIONAL_OR_KEYWORD,
         "VAR_POSITIONAL": inspect.Parameter.VAR_POSITIONAL, "KEYWORD_ONLY": inspect.Parameter.KEYWORD_ONLY,
         "VAR_KEYWORD": inspect.Parameter.VAR_KEYWORD}
# `**kwargs` that the real code forwards somewhere typed: check the keywords there instead.
FORWARDED = {"transformers_neuronx.llama.model.LlamaForSampling.from_pretrained":
             "transformers_neuronx.llama.model.LlamaForSampling.__init__"}
# InferenceConfig sets every extra keyword as a config attribute (config.py 827-829): only these are meant.
ATTRIBUTE_OVERRIDES = {"neuronx_distributed_inference.models.llama.modeling_llama.LlamaInferenceConfig.__init__":
                       {"rope_theta", "pad_token_id"}}


def versions(lib: str) -> list[dict]:
    return SIGS[lib]


def real_signature(entry: dict) -> inspect.Signature:
    params = []
    for name, kind, default in entry["params"]:
        d = inspect.Parameter.empty if default is None else default
        params.append(inspect.Parameter(name, KINDS[kind], default=d))
    return inspect.Signature(params)


def literal(src: str):
    try:
        return True, ast.literal_eval(src)
    except (ValueError, SyntaxError):
        return False, None


def fake_callables():
    """(qualified name, fake function) for every recorded public callable of both fakes."""
    out = {}
    for mod in (fake_transformers_neuronx, fake_nxdi):
        for obj in vars(mod).values():
            members = vars(obj).values() if inspect.isclass(obj) else [obj]
            for f in members:
                f = getattr(f, "__func__", f)  # classmethod
                q = getattr(f, "__qualified__", None)
                if q is not None:
                    out[q] = f
    return out


def check_call(qual: str, args: tuple, kwargs: dict, entry: dict, table: dict) -> None:
    """Bind one recorded call to the real signature; raise AssertionError/TypeError when it would misbehave there."""
    sig = real_signature(entry)
    bound = sig.bind(*args, **kwargs)  # TypeError: missing or surplus positional, duplicate value, ...
    var_kw = next((p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    extra = bound.arguments.get(var_kw, {}) if var_kw else {}
    if not extra:
        return
    if qual in FORWARDED:
        target = table[FORWARDED[qual]]
        check_call(FORWARDED[qual], (None, None), extra, target, table)  # (self, config) then the keywords
        return
    allowed = set(entry.get("popped_kwargs", ())) | ATTRIBUTE_OVERRIDES.get(qual, set())
    unknown = sorted(set(extra) - allowed)
    assert not unknown, f"{qual}: keywords {unknown} are swallowed by **{var_kw} in the real code ({entry['file']}:" \
                        f"{entry['line']})"


@pytest.mark.parametrize("lib, version", [("transformers_neuronx", "0.13.x"),
                                          ("neuronx_distributed_inference", "0.8.0")])
def test_fakes_declare_the_real_signatures(lib, version):
    table = next(v for v in versions(lib) if v["version"] == version)["callables"]
    fakes = fake_callables()
    for qual, entry in table.items():
        assert qual in fakes, f"the fake lacks {qual}"
        got = list(inspect.signature(fakes[qual]).parameters.values())
        want = entry["params"]
        assert [(p.name, p.kind.name) for p in got] == [(n, k) for n, k, _ in want], qual
        for p, (name, _, default) in zip(got, want, strict=True):
            assert (p.default is inspect.Parameter.empty) == (default is None), f"{qual}({name}): default presence"
            ok, value = literal(default) if default is not None else (False, None)
            if ok:
                assert p.default == value, f"{qual}({name}): default {p.default!r}, real {default}"


def spec(**extra) -> RunnerSpec:
    extra = {"context_buckets": (16, 32), "k_values": (2, 4), **extra}
    return RunnerSpec(max_slots=3, max_model_len=96, dtype="float32", device="cpu", neuron=NeuronOptions(**extra))


def exercise(run) -> None:
    """Prefill, decode with a free slot, verify, a sit-out slot."""
    run.execute(ForwardBatch([0, 1], [[5, 6, 7, 8], [9, 10, 11]], [0, 0], [1, 1]))
    run.execute(ForwardBatch([0, 1], [[12], [13]], [4, 3], [1, 1]))
    run.execute(ForwardBatch([0], [[14, 15, 16]], [5], [3]) if run.info().allowed_k != (0,)
                else ForwardBatch([0], [[14]], [5], [1]))


def recorded_calls(tiny_pair, monkeypatch, neuron_device) -> list[tuple[str, tuple, dict]]:
    contract_model.CALLS.clear()
    fake_transformers_neuronx.install(monkeypatch)
    fake_nxdi.install(monkeypatch)
    target, draft = (str(p) for p in tiny_pair)
    for build, extra in [(neuron_tnx.build, {}), (neuron_tnx.build, {"fused_speculation": True, "draft_model": draft}),
                         (neuron_nxdi.build, {})]:
        run = build(target, spec(**extra))
        run.warmup()
        exercise(run)
    neuron_nxdi.build(target, RunnerSpec(**{**spec().__dict__, "role": "draft"}))
    return list(contract_model.CALLS)


def test_every_runner_call_binds_to_every_pinned_version(tiny_pair, monkeypatch, neuron_device):
    calls = recorded_calls(tiny_pair, monkeypatch, neuron_device)
    seen = {q for q, _, _ in calls}
    for lib in ("transformers_neuronx", "neuronx_distributed_inference"):
        for v in versions(lib):
            table = v["callables"]
            for qual, args, kwargs in calls:
                if qual in table:
                    check_call(qual, args, kwargs, table[qual], table)
    # the calls that matter were made (else the check above proves nothing)
    for must in ("LlamaForSampling.forward", "LlamaForSampling.speculative_forward", "speculative_iteration",
                 "NeuronLlamaForCausalLM.forward", "NeuronConfig.__init__", "LlamaInferenceConfig.__init__",
                 "FusedSpeculativeDecoder.__init__", "GenerationConfig.__init__"):
        assert any(q.endswith(must) for q in seen), must


def test_a_misspelled_keyword_fails_the_check():
    tnx = versions("transformers_neuronx")[0]["callables"]
    nxdi = versions("neuronx_distributed_inference")[0]["callables"]
    fwd = "transformers_neuronx.llama.model.LlamaForSampling.forward"
    check_call(fwd, (None, None), {"cache_ids": None, "start_ids": None}, tnx[fwd], tnx)
    with pytest.raises(AssertionError, match="start_id"):  # swallowed by forward's **kwargs in the real code
        check_call(fwd, (None, None), {"cache_ids": None, "start_id": None}, tnx[fwd], tnx)
    fp = "transformers_neuronx.llama.model.LlamaForSampling.from_pretrained"
    with pytest.raises(AssertionError, match="context_length_estimates"):  # forwarded to __init__'s **kwargs
        check_call(fp, (None, "path"), {"context_length_estimates": [16]}, tnx[fp], tnx)
    nc = "neuronx_distributed_inference.models.config.NeuronConfig.__init__"
    check_call(nc, (None,), {"speculation_length": 5}, nxdi[nc], nxdi)
    with pytest.raises(AssertionError, match="speculation_len"):  # only logged by the real NeuronConfig
        check_call(nc, (None,), {"speculation_len": 5}, nxdi[nc], nxdi)
    it = "transformers_neuronx.fused_speculation.FusedSpeculativeDecoder.speculative_iteration"
    with pytest.raises(TypeError):  # no **kwargs at all
        check_call(it, (None, 1, 2), {"start_id": 3}, tnx[it], tnx)
