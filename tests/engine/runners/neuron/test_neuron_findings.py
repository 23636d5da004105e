"""One test per finding of issue 12: what the real library does (reproduced by the fakes, file:line at the pinned
commits) and that the runner now does the right thing with it. Each runner-side test fails on the runners before the
fix (int32 cache ids, free slots at position 0, fused mode without on-device generation, NxDI's new-token mask, a
speculation-only NxDI target asked for one-token calls, no rope_theta)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.runners import neuron_nxdi, neuron_tnx
from engine.runners.base import ForwardBatch
from engine.runners.options import NeuronOptions
from engine.runners.registry import RunnerSpec
from engine.runners.torch_runner import TorchRunner
from tests.engine.runners.neuron import contract_model

SLOTS, MAX_LEN = 3, 96


def spec(role: str = "target", **extra) -> RunnerSpec:
    extra = {"context_buckets": (16, 32), "k_values": (2, 4), **extra}
    return RunnerSpec(max_slots=SLOTS, max_model_len=MAX_LEN, dtype="float32", device="cpu", role=role,
                      neuron=NeuronOptions(**extra))


def torch_runner(path) -> TorchRunner:
    return TorchRunner.from_pretrained(path, max_slots=SLOTS, max_model_len=MAX_LEN, dtype="float32", device="cpu")


def close(a, b) -> bool:
    return torch.allclose(a, b, atol=2e-4, rtol=1e-4)


def one_live_slot(runs, prompt: list[int], steps: int) -> list[list[torch.Tensor]]:
    """Slot 0 only (slots 1.. free for the whole run): prefill, then greedy decode; logits per runner per step."""
    outs = [[r.execute(ForwardBatch([0], [prompt], [0], [1]))] for r in runs]
    seq = list(prompt) + [int(outs[0][0].argmax())]
    for _ in range(steps):
        for r, o in zip(runs, outs, strict=True):
            o.append(r.execute(ForwardBatch([0], [[seq[-1]]], [len(seq) - 1], [1])))
        seq.append(int(outs[0][-1].argmax()))
    return outs


# -- transformers-neuronx --------------------------------------------------------------------------------------------


def test_tnx_token_generation_scatters_cache_ids_into_an_ids_typed_tensor(tiny_pair, tnx):
    """base.py 576-585: int32 cache ids with int64 input ids fail exactly like torch's scatter_."""
    m = neuron_tnx.build(str(tiny_pair[0]), spec()).model
    ids, slot = torch.tensor([[5]]), torch.tensor([0])
    with pytest.raises(RuntimeError, match="scatter"):
        m.forward(ids, cache_ids=torch.tensor([[3]], dtype=torch.int32), start_ids=slot)
    m.forward(ids, cache_ids=torch.tensor([[3]]), start_ids=slot)


def test_tnx_decode_runs_and_matches_torch(tiny_pair, tnx):
    path = str(tiny_pair[0])
    got, want = one_live_slot([neuron_tnx.build(path, spec()), torch_runner(path)], list(range(3, 23)), 4)
    assert all(close(g, w) for g, w in zip(got, want, strict=True))


def test_tnx_fused_decoder_requires_on_device_embedding_and_generation(tiny_pair, tnx):
    """fused_speculation.py 295-306: asserted on both models; with them, forward returns ids (model.py 341-343)."""
    path = str(tiny_pair[0])
    plain = neuron_tnx._load(path, spec(), neuron_tnx.NeuronOptions(), (16, 32), (MAX_LEN,), ())
    with pytest.raises(AssertionError, match="on-device embedding"):
        tnx.FusedSpeculativeDecoder(plain, plain, 2)
    run = neuron_tnx.build(path, spec(fused_speculation=True, draft_model=str(tiny_pair[1])))
    fsd = run.fused[0]
    assert isinstance(fsd, torch.nn.Module) and not hasattr(fsd, "load") and not hasattr(fsd, "save")
    ids = run.model.forward(torch.tensor([[5, 6, 7]]), cache_ids=torch.arange(3)[None], start_ids=torch.tensor([1]))
    assert ids.dtype == torch.int32 and ids.numel() == 1  # a token id, not logits
    b = ForwardBatch([0], [list(range(3, 23))], [0], [1])
    out, ref = run.execute(b), torch_runner(path).execute(b)
    assert int(out.argmax()) == int(ref.argmax()) and torch.isinf(out).sum() == out.numel() - 1  # one-hot


def test_tnx_fused_graphs_are_cached_per_model_and_rebuilt_fused(tiny_pair, tmp_path, tnx, caplog):
    """FusedSpeculativeDecoder is an nn.Module without load/save: draft and target are saved and loaded on their own
    (base.py 39-55), the fused graph is built at every start."""
    import logging

    extra = {"fused_speculation": True, "draft_model": str(tiny_pair[1]), "compiled_dir": str(tmp_path)}
    with caplog.at_level(logging.INFO, logger="specserve.engine"):
        neuron_tnx.build(str(tiny_pair[0]), spec(**extra))
        caplog.clear()
        run = neuron_tnx.build(str(tiny_pair[0]), spec(**extra))
    assert caplog.text.count("cache hit") == 2 and "fused speculator" in caplog.text
    assert run.fused[0].speculator == "compiled"


def test_tnx_fused_keeps_speculating_with_free_slots(tiny_pair, tnx):
    """fused_speculation.py 767: one row at cache id 0 turns the whole call into a plain decode (counts 1). Free
    slots are left out (the library zero-pads them after that check, 871-895): every call speculates."""
    path = str(tiny_pair[0])
    run = neuron_tnx.build(path, spec(fused_speculation=True, draft_model=str(tiny_pair[0]), k_values=(3,)))
    got, want = one_live_slot([run, torch_runner(path)], list(range(3, 23)), 12)
    assert [int(g.argmax()) for g in got] == [int(w.argmax()) for w in want]
    assert "context" not in tnx.ROUTES and tnx.ROUTES.count("fused") <= 4  # self-draft: 4 tokens per call


def test_tnx_fused_pad_token_substitution(tiny_pair, tnx):
    """fused_speculation.py 226-228 replaces every pad id in the tokens with tokens[0, 0]: with the default pad id 0 a
    real token 0 is lost, so the runner passes an id outside the vocabulary."""
    run = neuron_tnx.build(str(tiny_pair[0]), spec(fused_speculation=True, draft_model=str(tiny_pair[1])))
    fsd = run.fused[0]
    assert fsd.pad_token_id == run.info().vocab_size
    fsd.pad_token_id = 0
    tokens, counts = fsd.speculative_iteration_post_process(torch.tensor([[7, 0, 9], [0, 4, 5]]),
                                                            torch.tensor([[3], [2]]))
    assert tokens.tolist() == [[7, 7, 9], [7, 4, 0]]  # the library's own behaviour: both real 0s became 7


def test_tnx_speculative_forward_finds_its_graph_from_the_input_length(tiny_pair, tnx):
    """model.py 324-328: an int never equals a (k, batch) key; None takes the token-generation graph and then fails
    on `-speculation_length`; a shorter input is padded with cache id max(context buckets) - 1 (base.py 565-569),
    which overwrites that position of a longer sequence. The runner always sends a compiled length."""
    path = str(tiny_pair[0])
    run, ref = neuron_tnx.build(path, spec()), torch_runner(path)
    m = run.model
    seq = list(range(3, 3 + 40))  # longer than max(ctx) - 1 = 31
    for r in (run, ref):
        r.execute(ForwardBatch([0], [seq], [0], [1]))
    contract_model.CALLS.clear()
    b = ForwardBatch([0], [[seq[-1], 5, 6]], [40], [3])
    assert close(run.execute(b), ref.execute(b))
    lengths = {a[1].shape[1] for q, a, _ in contract_model.CALLS if q.endswith("speculative_forward")}
    assert lengths <= {3, 5}
    ids, pos = torch.tensor([[7, 8]] * SLOTS), torch.tensor([[43, 44]] * SLOTS)
    out = m.speculative_forward(ids, cache_ids=pos, start_ids=torch.arange(SLOTS), speculation_length=2)
    assert out.shape[0] == 3  # padded to the 3-token graph ...
    for r in (run, ref):
        r.execute(ForwardBatch([0], [[7, 8]], [43], [2]))  # the same tokens, now at the positions the runner sends
    b = ForwardBatch([0], [[9]], [45], [1])
    assert not close(run.execute(b), ref.execute(b))  # ... and position 31 of slot 0 had been overwritten
    with pytest.raises(TypeError):
        m.speculative_forward(ids, cache_ids=pos, start_ids=torch.arange(SLOTS), speculation_length=None)


def test_tnx_context_encoding_writes_the_whole_bucket_and_windows_must_fit_it(tiny_pair, tnx):
    """base.py 464-466: a prompt of n < bucket writes K/V at 0..bucket-1; base.py 553-555: a speculative input
    longer than the largest context bucket is rejected, so the runner refuses such K at build time."""
    path = str(tiny_pair[0])
    run = neuron_tnx.build(path, spec())
    run.execute(ForwardBatch([1], [list(range(3, 10))], [0], [1]))  # 7 tokens, bucket 16
    k = run.model.slots.cache.k[0][1]  # (kv_heads, max_len, head_dim) of slot 1, layer 0
    assert k[:, 7:16].abs().sum() > 0 and k[:, 16:].abs().sum() == 0
    with pytest.raises(ValueError, match="largest context bucket"):
        neuron_tnx.build(path, spec(context_buckets=(4, 8), k_values=(8,)))


# -- NxD Inference ---------------------------------------------------------------------------------------------------


def test_nxdi_attention_mask_is_the_prior_kv_mask(tiny_pair, nxdi):
    """model_base.py 258-270: the mask says which cache positions a call reads; hf_adapter.py passes the whole context.
    A mask over the new tokens only reads positions [0, m)."""
    path = str(tiny_pair[0])
    run = neuron_nxdi.build(path, spec(k_values=()))
    contract_model.CALLS.clear()
    got, want = one_live_slot([run, torch_runner(path)], list(range(3, 23)), 3)
    assert all(close(g, w) for g, w in zip(got, want, strict=True))
    decodes = [kw for q, _, kw in contract_model.CALLS if q.endswith("NeuronLlamaForCausalLM.forward")][1:]
    for kw in decodes:
        start = int(kw["position_ids"][0, 0])
        assert kw["attention_mask"].shape[1] == start and int(kw["attention_mask"].sum()) == start
    # the same call with a mask over the new token only gives other logits
    m = run.model
    out = m(torch.tensor([[9]]), attention_mask=torch.ones(1, 1, dtype=torch.long),
            position_ids=torch.tensor([[23]]), seq_ids=torch.tensor([0])).logits[0, -1]
    ref = torch_runner(path)
    ref.execute(ForwardBatch([0], [list(range(3, 23)) + [int(want[0].argmax()), 4, 5]], [0], [1]))
    assert not close(out, ref.execute(ForwardBatch([0], [[9]], [23], [1]))[0])


def test_nxdi_free_slots_never_route_to_context_encoding(tiny_pair, nxdi):
    """model_base.py 3591: position_ids.min() == 0 sends the call to context encoding, whatever its length."""
    path = str(tiny_pair[0])
    for k_values in ((), (4,)):
        nxdi.ROUTES.clear()
        run = neuron_nxdi.build(path, spec(k_values=k_values))
        got, want = one_live_slot([run, torch_runner(path)], list(range(3, 23)), 4)
        assert all(close(g, w) for g, w in zip(got, want, strict=True))
        assert nxdi.ROUTES.count("context_encoding_model") == 1


def test_nxdi_speculation_graph_replaces_token_generation(tiny_pair, nxdi):
    """model_base.py 3105-3110: with speculation_length > 0 there is no token-generation model. The target runs its
    one-token rows through the K+1 graph; the draft is compiled with speculation_length 0."""
    path = str(tiny_pair[0])
    target = neuron_nxdi.build(path, spec(k_values=(4,)))
    assert not hasattr(target.model, "token_generation_model") and target.model.nc.speculation_length == 5
    draft = neuron_nxdi.build(path, spec("draft", k_values=(4,)))
    assert draft.model.nc.speculation_length == 0 and hasattr(draft.model, "token_generation_model")
    for run in (target, draft):
        got, want = one_live_slot([run, torch_runner(path)], list(range(3, 23)), 2)
        assert all(close(g, w) for g, w in zip(got, want, strict=True))
        b = ForwardBatch([0], [[4, 5, 6]], [23], [3])  # a catch-up / verify row
        ref = torch_runner(path)
        ref.execute(ForwardBatch([0], [list(range(3, 23)) + [int(want[0].argmax()), int(want[1].argmax())]],
                                 [0], [1]))
        run.execute(ForwardBatch([0], [[int(want[1].argmax())]], [22], [1]))  # same history as ref
        ref.execute(ForwardBatch([0], [[int(want[1].argmax())]], [22], [1]))
        assert close(run.execute(b), ref.execute(b))


def test_nxdi_config_gets_rope_theta_when_config_json_has_only_rope_parameters(tiny_pair, tmp_path, nxdi):
    """modeling_llama.py 321-333 requires rope_theta; transformers 5 writes only rope_parameters."""
    src = tiny_pair[0]
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    assert "rope_theta" not in cfg and cfg["rope_parameters"]["rope_theta"] == 10000.0
    cfg["rope_parameters"]["rope_theta"] = 5e5
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AssertionError, match="rope_theta"):
        nxdi.LlamaInferenceConfig(nxdi.NeuronConfig(), load_config=nxdi.load_pretrained_config(str(dst)))
    run = neuron_nxdi.build(str(dst), spec())
    assert run.model.config.rope_theta == 5e5
