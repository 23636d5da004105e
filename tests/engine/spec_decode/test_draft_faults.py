"""A draft-model fault costs speculation for that step, never the requests or the engine.

The draft runner's `execute` is made to raise (once mid-proposal, or always); the engine must fall back to K = 0 for
the step, roll the draft caches back, and keep serving: greedy output stays exactly the no-speculation output.
"""

from __future__ import annotations

import pytest

from engine.spec_decode.draft_model import DraftModelProposer
from tests.helpers.engines import final, greedy, make_engine, run_all, tokens_of

PROMPTS = ["def add(a, b):", "for i in range(10):", "class Point:", "import os\nimport sys"]
LIMITS = dict(max_num_seqs=4, max_queue=16, max_num_batched_tokens=64, max_model_len=128)


def draft_proposer(eng) -> DraftModelProposer:
    p = eng.proposer
    while not isinstance(p, DraftModelProposer):  # wrappers (structured output) keep the real one as `inner`
        p = p.inner
    return p


def break_draft_runner(eng, fail_call) -> dict:
    """Make the draft runner raise on the draft calls for which `fail_call(call_number)` is true."""
    runner = draft_proposer(eng).runner
    real = runner.execute
    state = {"calls": 0, "raised": 0}

    def execute(batch):
        state["calls"] += 1
        if fail_call(state["calls"]):
            state["raised"] += 1
            raise RuntimeError("injected draft fault")
        return real(batch)

    runner.execute = execute
    return state


@pytest.fixture(scope="module")
def reference(tiny_pair):
    eng = make_engine(tiny_pair[0], **LIMITS)
    for i, p in enumerate(PROMPTS):
        eng.add_request(f"r{i}", eng.tokenizer.encode(p), greedy(30, ignore_eos=True))
    return {rid: tokens_of(o) for rid, o in run_all(eng).items()}


def run_prompts(eng) -> dict:
    for i, p in enumerate(PROMPTS):
        eng.add_request(f"r{i}", eng.tokenizer.encode(p), greedy(30, ignore_eos=True))
    return run_all(eng)


@pytest.mark.parametrize("policy", ["static", "adaptive"])
def test_draft_faults_mid_proposal_fall_back_to_k0_and_output_is_unchanged(tiny_pair, reference, policy):
    target, draft = tiny_pair
    eng = make_engine(target, method="draft", draft=draft, num_speculative_tokens=3, speculative_policy=policy,
                      **LIMITS)
    # Calls 2, 5, 8: the second draft pass of a proposal, after the catch-up pass moved the draft caches forward.
    state = break_draft_runner(eng, lambda n: n in (2, 5, 8))
    outs = run_prompts(eng)
    # The adaptive policy chooses K from measured step times, so under CPU load it may draft less often and reach
    # fewer than 8 draft calls; the static policy always drafts and must meet all three faults.
    assert state["raised"] == 3 if policy == "static" else state["raised"] >= 1
    assert {rid: tokens_of(o) for rid, o in outs.items()} == reference
    assert all(final(o).finish_reason == "length" and final(o).error is None for o in outs.values())
    assert eng.counters.draft_errors == state["raised"] and "injected draft fault" in eng.counters.last_draft_error
    if state["calls"] > 8:
        assert eng.counters.draft_tokens > 0, "speculation should resume after the faults"
    assert eng.counters.runner_errors == 0  # the target never failed


def test_a_draft_runner_that_always_fails_leaves_plain_decoding(tiny_pair, reference):
    target, draft = tiny_pair
    eng = make_engine(target, method="draft", draft=draft, num_speculative_tokens=3, speculative_policy="static",
                      **LIMITS)
    state = break_draft_runner(eng, lambda n: True)
    outs = run_prompts(eng)
    assert state["raised"] > 0 and eng.counters.draft_errors == state["raised"]
    assert {rid: tokens_of(o) for rid, o in outs.items()} == reference
    assert eng.counters.draft_tokens == 0
    # The engine keeps taking requests.
    eng.add_request("later", eng.tokenizer.encode(PROMPTS[0]), greedy(30, ignore_eos=True))
    assert tokens_of(run_all(eng)["later"]) == reference["r0"]
