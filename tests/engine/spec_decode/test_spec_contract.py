"""What speculation must never change, checked end to end on the tiny pair (torch runner; fp32, and bf16 where the
batch-composition test runs through the batch-invariant attention):

- greedy tokens and seeded samples are the same whatever the batch around the request, and as without speculation;
- a stop string completed inside an accepted run cuts the text there, and only delivered drafts count as accepted;
- logprobs come from the target's own row for every emitted token, also for recovered tokens of an imperfect draft.
"""

from __future__ import annotations

import pytest
import torch

from engine.runners.base import ForwardBatch
from engine.sampling.params import SamplingParams
from tests.helpers.engines import final, greedy, make_engine, run_all, text_of, tokens_of

PROMPT = "for i in range(10):"
MATES = ["def add(a, b):", "class Point:", "import os\nimport sys", "x = [1, 2, 3]", "The quick brown fox",
         "if __name__ == '__main__':", "Numbers 0123456789"]
LIMITS = dict(max_num_seqs=8, max_queue=32, max_num_batched_tokens=40, max_model_len=256)
K = 4


def seeded() -> SamplingParams:
    return SamplingParams(max_tokens=20, temperature=1.0, seed=42, ignore_eos=True)


def run_in_batch(eng, n_mates: int) -> tuple[list[int], list[int]]:
    """The greedy and the seeded request after `n_mates` requests that are already decoding (the budget of 40 binds
    from 3 mates on at K = 4). Returns (greedy tokens, seeded tokens)."""
    tok = eng.tokenizer
    for i in range(n_mates):
        params = SamplingParams(max_tokens=60, temperature=0.0 if i % 2 else 0.9, ignore_eos=True,
                                speculative=i % 3 != 2)
        eng.add_request(f"mate{i}", tok.encode(MATES[i]), params)
    for _ in range(2 if n_mates else 0):
        eng.step()
    ids = tok.encode(PROMPT)
    eng.add_request("greedy", ids, greedy(20, ignore_eos=True))
    eng.add_request("seeded", ids, seeded())
    outs = run_all(eng)
    return tokens_of(outs["greedy"]), tokens_of(outs["seeded"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("method, policy", [("draft", "adaptive"), ("ngram", "adaptive"), ("draft", "static")])
def test_greedy_and_seeded_outputs_do_not_depend_on_batch_composition(tiny_pair, method, policy, dtype):
    target, draft = tiny_pair
    plain = make_engine(target, dtype=dtype, **LIMITS)
    want_greedy, want_seeded = run_in_batch(plain, 0)

    results = {}
    for n_mates in (0, 3, 7):
        eng = make_engine(target, method=method, draft=draft if method == "draft" else None, dtype=dtype,
                          num_speculative_tokens=K, speculative_policy=policy, **LIMITS)
        results[n_mates] = run_in_batch(eng, n_mates)
        assert eng.counters.draft_tokens > 0
    assert all(g == want_greedy for g, _ in results.values())  # greedy: with or without speculation, any batch
    # seeded: the same sample whatever the batch, and the same as without speculation (keyed Gumbel coupling, so
    # also whatever K the policy and the budget gave each step)
    assert all(s == want_seeded for _, s in results.values())


def test_stop_string_completed_inside_an_accepted_run(tiny_pair):
    """The target drafting for itself accepts everything: pass p >= 1 emits tokens 5p-4 .. 5p. A stop string that is
    first completed by token s with s % 5 in {1, 2, 3} ends the request inside an accepted run."""
    target, _ = tiny_pair
    plain = make_engine(target, max_model_len=128)
    tok = plain.tokenizer
    ids = tok.encode("def add(a, b):")
    plain.add_request("r", ids, greedy(40, ignore_eos=True))
    base = tokens_of(run_all(plain)["r"])
    full = tok.decode(base, skip_special_tokens=True)

    def stop_at(s: int) -> str | None:
        before = tok.decode(base[:s], skip_special_tokens=True)
        piece = tok.decode(base[: s + 1], skip_special_tokens=True)[len(before):]
        ok = piece.isascii() and piece.strip() and full.find(piece) == len(before)
        return piece if ok else None

    s = next(i for i in range(1, len(base)) if i % (K + 1) in (1, 2, 3) and stop_at(i))
    stop = stop_at(s)
    eng = make_engine(target, method="draft", draft=target, num_speculative_tokens=K, speculative_policy="static",
                      max_model_len=128)
    eng.add_request("r", ids, greedy(40, ignore_eos=True, stop=[stop]))
    outs = run_all(eng)["r"]
    assert final(outs).finish_reason == "stop" and final(outs).stop_reason == stop
    assert text_of(outs) == full[: full.index(stop)]
    assert tokens_of(outs) == base[: s + 1]
    assert final(outs).spec.accepted_tokens == K * (s // (K + 1)) + s % (K + 1)


def teacher_forced_logprobs(eng, prompt: list[int], out: list[int]) -> torch.Tensor:
    """log_softmax of the target's logits at the rows that predicted each of `out` -> `[len(out), V]`."""
    logits = eng.runner.execute(ForwardBatch([0], [prompt + out[:-1]], [0], [len(out)]))  # (len(out), V)
    eng.runner.release_slot(0)
    return torch.log_softmax(logits.float(), dim=-1)


@pytest.mark.parametrize("params", [greedy(24, ignore_eos=True, logprobs=2),
                                    SamplingParams(max_tokens=40, temperature=1.5, seed=5, ignore_eos=True,
                                                   logprobs=2)],
                         ids=["greedy", "sampled"])
def test_logprobs_with_an_imperfect_draft_are_the_targets_own(tiny_pair, params):
    """The tiny draft disagrees with the target now and then, so some tokens are recovered at a rejected position:
    their logprobs must be the target's at that row (not the draft's, not a neighbour row's)."""
    target, draft = tiny_pair
    eng = make_engine(target, method="draft", draft=draft, num_speculative_tokens=3, speculative_policy="static",
                      max_model_len=128)
    prompt = eng.tokenizer.encode("import os")
    eng.add_request("r", prompt, params)
    outs = run_all(eng)["r"]
    spec = final(outs).spec
    assert 0 < spec.accepted_tokens < spec.draft_tokens, "need both accepted and rejected drafts"
    got = [lp for o in outs for lp in o.logprobs]
    out = tokens_of(outs)
    assert [lp.token_id for lp in got] == out
    ref = teacher_forced_logprobs(make_engine(target, max_model_len=128), prompt, out)
    for i, lp in enumerate(got):
        assert lp.logprob == pytest.approx(float(ref[i, out[i]]), abs=1e-4), i
        assert [t.token_id for t in lp.top] == ref[i].topk(2).indices.tolist(), i
