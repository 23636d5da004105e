"""The Neuron runners against fakes written from the libraries' real sources: the same batches give the torch runner's
logits (chunked prefill, decode, verify with compiled and uncompiled K, rollbacks, slot reuse, free slots), a runner
that leaves a live slot out of a call is caught, compiled graphs are reused, and availability names what is missing."""

from __future__ import annotations

import logging
import random

import pytest
import torch

from engine.errors import PromptTooLongError
from engine.runners import neuron_nxdi, neuron_tnx
from engine.runners.base import ForwardBatch, Runner
from engine.runners.options import NeuronOptions
from engine.runners.registry import RunnerSpec, resolve_backend
from engine.runners.torch_runner import TorchRunner
from engine.sampling.params import SamplingParams
from tests.engine.runners.neuron.contract_model import ContractViolation

SLOTS, MAX_LEN = 4, 96
BUILD = {"neuron-tnx": neuron_tnx.build, "neuron-nxdi": neuron_nxdi.build}


def spec(role: str = "target", **extra) -> RunnerSpec:
    extra = {"context_buckets": (16, 32), "k_values": (2, 4), **extra}
    return RunnerSpec(max_slots=SLOTS, max_model_len=MAX_LEN, dtype="float32", device="cpu", role=role,
                      neuron=NeuronOptions(**extra))


def torch_runner(path) -> TorchRunner:
    return TorchRunner.from_pretrained(path, max_slots=SLOTS, max_model_len=MAX_LEN, dtype="float32", device="cpu")


class Schedule:
    """Random engine-like traffic: chunked prompts, decode and verify rows with rollback, finished slots reused."""

    def __init__(self, seed: int, vocab: int, max_prompt: int = 30, max_k: int = 6):
        self.rng = random.Random(seed)
        self.vocab, self.max_prompt, self.max_k = vocab, max_prompt, max_k
        self.seqs: dict[int, dict] = {}  # slot -> {"ids": [...], "computed": int}

    def step(self) -> tuple[ForwardBatch, list]:
        rows, updates = [], []
        for slot in range(SLOTS):
            s = self.seqs.get(slot)
            if s is None:
                if self.rng.random() < 0.5:
                    n = self.rng.randint(2, self.max_prompt)
                    self.seqs[slot] = s = {"ids": [self.rng.randrange(self.vocab) for _ in range(n)], "computed": 0}
                else:
                    continue
            if self.rng.random() < 0.25:
                continue  # this slot sits out the step: its cache must survive calls that do not concern it
            left = len(s["ids"]) - s["computed"]
            if left > 1 or s["computed"] == 0:  # prefill chunk
                n = min(left, self.rng.randint(1, 12))
                last = s["computed"] + n == len(s["ids"])
                rows.append((slot, s["ids"][s["computed"]:s["computed"] + n], s["computed"], 1 if last else 0))
                updates.append((slot, n, None))
            else:
                k = min(self.rng.randint(0, self.max_k), MAX_LEN - len(s["ids"]) - 1)
                drafts = [self.rng.randrange(self.vocab) for _ in range(k)]
                rows.append((slot, [s["ids"][-1], *drafts], s["computed"], k + 1))
                updates.append((slot, 1, drafts))
        if not rows:
            return self.step()
        batch = ForwardBatch([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
        return batch, updates

    def apply(self, updates, release) -> None:
        for slot, n, drafts in updates:
            s = self.seqs[slot]
            s["computed"] += n
            if drafts is not None:
                a = self.rng.randint(0, len(drafts))
                s["computed"] += a
                s["ids"] += drafts[:a] + [self.rng.randrange(self.vocab)]
            elif s["computed"] == len(s["ids"]):  # last prompt chunk: the engine appends the sampled token
                s["ids"].append(self.rng.randrange(self.vocab))
            if s["computed"] == len(s["ids"]) - 1 and (len(s["ids"]) > MAX_LEN - 8 or self.rng.random() < 0.03):
                del self.seqs[slot]
                release(slot)


@pytest.mark.parametrize("role", ["target", "draft"])
def test_random_schedule_matches_torch_runner(tiny_pair, neuron_backend, role):
    path = str(tiny_pair[0])
    ref, run = torch_runner(path), BUILD[neuron_backend](path, spec(role))
    assert isinstance(run, Runner)
    sched = Schedule(seed=1, vocab=run.info().vocab_size)
    for step in range(120):
        batch, updates = sched.step()
        want, got = ref.execute(batch), run.execute(batch)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4, msg=f"step {step}: {batch}")

        def release(slot):
            ref.release_slot(slot)
            run.release_slot(slot)

        sched.apply(updates, release)
    assert run.calls["context"] > 0
    # NxDI builds no token-generation graph next to a speculation graph (model_base.py 3105-3110): decode rows go
    # through the window; its draft has only the token-generation graph (multi-token rows run token by token).
    if neuron_backend == "neuron-nxdi" and role == "target":
        assert run.calls["decode"] == 0 and run.calls["window"] > 0
    elif neuron_backend == "neuron-nxdi":
        assert run.calls["decode"] > 0 and run.calls["window"] == 0
    else:
        assert run.calls["decode"] > 0 and run.calls["window"] > 0


def test_draft_catch_up_longer_than_a_context_bucket(tiny_pair, tnx):
    """A draft catching up on prompt + output from position 0 may exceed the largest bucket: one bucket is encoded,
    the rest runs through windows; logits still equal torch's."""
    path = str(tiny_pair[0])
    ref, run = torch_runner(path), neuron_tnx.build(path, spec("draft"))
    ids = list(range(3, 3 + 45))
    b = ForwardBatch([1], [ids], [0], [1])
    torch.testing.assert_close(run.execute(b), ref.execute(b), atol=2e-4, rtol=1e-4)
    b = ForwardBatch([1, 0], [[7], [5, 6, 7]], [45, 0], [1, 1])  # a 3-token prompt joins a decode
    torch.testing.assert_close(run.execute(b), ref.execute(b), atol=2e-4, rtol=1e-4)


def drop_idle_slots(run) -> None:
    """Make `run` list only the batch's own rows in decode calls (what the contract forbids)."""
    windows, decode = run._run_windows, type(run)._decode

    def listed_windows(rows, out):
        run.listed = sorted({r.slot for r in rows})
        return windows(rows, out)

    def listed(call):
        def inner(ids, pos, slots, live):
            only = torch.zeros_like(live)
            only[torch.tensor(run.listed)] = True
            return call(run, ids, pos, slots, live & only)
        return inner

    run._run_windows, run._decode, run._window = listed_windows, listed(decode), listed(type(run)._window)


@pytest.mark.parametrize("drop", [False, True])
def test_a_live_slot_left_out_of_a_decode_call_is_corrupted(tiny_pair, neuron_backend, drop):
    """Both contract models write into every slot a decode call does not list (tnx: token 0 at position 0; NxDI: the
    first row's token at its position). Our runner lists every slot and matches torch; a runner that drops idle slots
    gives a different answer for the sequence that sat out."""
    path = str(tiny_pair[0])
    ref, run = torch_runner(path), BUILD[neuron_backend](path, spec())
    if drop:
        drop_idle_slots(run)
    a, b = [11, 12, 13, 14], list(range(21, 30))  # slot 1 is longer: NxDI's padding lands inside its prefix
    for r in (ref, run):
        r.execute(ForwardBatch([0, 1], [a, b], [0, 0], [1, 1]))
        for i in range(3):  # slot 1 sits out three decode steps
            r.execute(ForwardBatch([0], [[30 + i]], [4 + i], [1]))
    batch = ForwardBatch([1], [[35]], [9], [1])
    same = torch.allclose(run.execute(batch), ref.execute(batch), atol=2e-4, rtol=1e-4)
    assert same is not drop


def test_fakes_reject_what_the_libraries_reject(tiny_pair, tnx, nxdi):
    path = str(tiny_pair[0])
    m = neuron_tnx.build(path, spec()).model
    one = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ContractViolation):  # several tokens at a non-zero position through forward()
        m.forward(torch.ones(1, 3, dtype=torch.long), cache_ids=torch.tensor([[4, 5, 6]]), start_ids=one)
    with pytest.raises(AssertionError, match="invalid batch size for speculative forward"):  # base.py 559-561
        m.speculative_forward(torch.ones(1, 3, dtype=torch.long), cache_ids=torch.tensor([[4, 5, 6]]),
                              start_ids=one, speculation_length=3)
    with pytest.raises(AssertionError, match="invalid input prompt length"):  # longer than the largest bucket
        m.forward(torch.ones(1, 40, dtype=torch.long), cache_ids=torch.arange(40)[None], start_ids=one)
    nx = neuron_nxdi.build(path, spec()).model
    with pytest.raises(AttributeError, match="token_generation_model"):  # 3 tokens: neither 5 nor a context call
        nx(torch.ones(SLOTS, 3, dtype=torch.long), attention_mask=torch.ones(SLOTS, 3, dtype=torch.long),
           position_ids=torch.arange(1, 4).repeat(SLOTS, 1), seq_ids=torch.arange(SLOTS))


def test_info_reports_compiled_k_and_buckets(tiny_pair, tnx, nxdi):
    path = str(tiny_pair[0])
    t = neuron_tnx.build(path, spec(k_values=(2, 4))).info()
    assert (t.allowed_k, t.buckets, t.max_chunk_tokens, t.backend) == ((0, 2, 4), (16, 32), 32, "neuron-tnx")
    assert sorted(neuron_tnx.build(path, spec()).model.decoder_lm_head_for_speculation) == [(3, SLOTS), (5, SLOTS)]
    n = neuron_nxdi.build(path, spec(k_values=(2, 4))).info()
    assert (n.allowed_k, n.backend) == ((0, 4), "neuron-nxdi")  # NxDI compiles one speculation_length


def test_prompt_longer_than_the_largest_bucket_is_refused_at_admission(tiny_pair, tnx):
    run = neuron_tnx.build(str(tiny_pair[0]), spec())
    run.check_request(list(range(32)), SamplingParams())
    with pytest.raises(PromptTooLongError, match="largest compiled context bucket is 32"):
        run.check_request(list(range(33)), SamplingParams())


@pytest.mark.parametrize("backend", ["neuron-tnx", "neuron-nxdi"])
def test_compiled_graphs_are_saved_and_reused(tiny_pair, tmp_path, monkeypatch, neuron_device, backend, caplog):
    from tests.engine.runners.neuron import fake_nxdi, fake_transformers_neuronx

    fake = fake_transformers_neuronx if backend == "neuron-tnx" else fake_nxdi
    fake.install(monkeypatch)
    path, cache = str(tiny_pair[0]), str(tmp_path / "compiled")
    with caplog.at_level(logging.INFO, logger="specserve.engine"):
        BUILD[backend](path, spec(compiled_dir=cache))
        n = len(fake.COMPILES)
        assert n >= 1 and "cache miss" in caplog.text
        caplog.clear()
        run = BUILD[backend](path, spec(compiled_dir=cache))
        assert len(fake.COMPILES) == n and "cache hit" in caplog.text
        n = len(fake.COMPILES)
        BUILD[backend](path, spec(compiled_dir=cache, k_values=(3,)))  # other graphs: compiled anew
        assert len(fake.COMPILES) > n
    b = ForwardBatch([0], [[1, 2, 3]], [0], [1])
    torch.testing.assert_close(run.execute(b), torch_runner(path).execute(b), atol=2e-4, rtol=1e-4)


def test_availability_names_what_is_missing(monkeypatch, tmp_path):
    import engine.runners.neuron_common as nc

    monkeypatch.setattr(nc, "NEURON_DEVICE", str(tmp_path / "absent"))
    assert resolve_backend("auto").name == "torch"
    with pytest.raises(RuntimeError, match="transformers-neuronx is not installed"):
        resolve_backend("neuron-tnx")
    with pytest.raises(RuntimeError, match="neuronx-distributed-inference is not installed"):
        resolve_backend("neuron-nxdi")


def test_auto_picks_neuron_only_with_library_and_device(monkeypatch, tmp_path, tnx, neuron_device):
    import engine.runners.neuron_common as nc

    assert resolve_backend("auto").name == "neuron-tnx"
    monkeypatch.setattr(nc, "NEURON_DEVICE", str(tmp_path / "absent"))
    assert resolve_backend("auto").name == "torch"
    with pytest.raises(RuntimeError, match="no Neuron device"):
        resolve_backend("neuron-tnx")
