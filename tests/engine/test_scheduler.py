"""Scheduler in counters only: no model, sequences from a small factory."""

from __future__ import annotations

import pytest

from engine.sampling.params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence, SequenceStatus


def seq(i: int, prompt_len: int, max_tokens: int = 8) -> Sequence:
    return Sequence(
        seq_id=f"r{i}-0", request_id=f"r{i}", index=0, prompt_ids=list(range(prompt_len)),
        params=SamplingParams(max_tokens=max_tokens), max_total_len=prompt_len + max_tokens,
        stop_token_ids=frozenset(),
    )


def run_step(sched: Scheduler, k_policy=None):
    """Apply the scheduler's plan as a runner + sampler would: computed counters move, a token is appended."""
    out = sched.schedule(k_policy) if k_policy else sched.schedule()
    for r in out.rows:
        r.seq.num_computed += r.num_new
        if r.is_last_chunk:
            r.seq.output_ids.append(7)
    return out


def test_chunked_prefill_respects_budget_and_decodes_go_first():
    sched = Scheduler(max_num_seqs=4, max_queue=4, max_num_batched_tokens=16)
    a = seq(0, prompt_len=4)
    sched.add(a)
    run_step(sched)  # a prefilled in one chunk, now decoding
    long = seq(1, prompt_len=40)
    sched.add(long)
    out = run_step(sched)
    assert [r.seq for r in out.rows] == [a, long]
    assert out.rows[0].num_new == 1 and not out.rows[0].is_prefill
    assert out.rows[1].num_new == 15 and not out.rows[1].is_last_chunk  # 16 - 1 decode token
    out = run_step(sched)
    assert out.rows[1].num_new == 15
    out = run_step(sched)
    assert out.rows[1].num_new == 10 and out.rows[1].is_last_chunk  # 40 = 15 + 15 + 10
    assert sum(r.num_new for r in out.rows) <= 16


def test_fcfs_admission_and_slot_reuse():
    sched = Scheduler(max_num_seqs=2, max_queue=2, max_num_batched_tokens=64)
    seqs = [seq(i, 3) for i in range(4)]
    for s in seqs:
        sched.add(s)
    run_step(sched)
    assert [s.status for s in seqs] == [SequenceStatus.RUNNING] * 2 + [SequenceStatus.WAITING] * 2
    assert {seqs[0].slot, seqs[1].slot} == {0, 1}
    freed = seqs[0].slot
    sched.finish(seqs[0], "stop")
    assert seqs[0].slot is None and freed in sched.free_slots
    run_step(sched)
    assert seqs[2].status is SequenceStatus.RUNNING and seqs[2].slot == freed
    assert seqs[3].status is SequenceStatus.WAITING


def test_capacity_counts_slots_plus_queue():
    sched = Scheduler(max_num_seqs=2, max_queue=1, max_num_batched_tokens=8)
    for i in range(3):
        assert sched.has_capacity(1)
        sched.add(seq(i, 2))
    assert not sched.has_capacity(1)


def test_draft_budget_is_capped_by_remaining_tokens_and_budget():
    sched = Scheduler(max_num_seqs=2, max_queue=0, max_num_batched_tokens=6)
    a, b = seq(0, 2, max_tokens=3), seq(1, 2, max_tokens=20)
    sched.add(a)
    sched.add(b)
    run_step(sched)  # both prefilled, one token each
    out = sched.schedule(lambda seqs, budget: [8] * len(seqs))
    ks = {r.seq.request_id: r.max_draft for r in out.rows}
    # a may emit 2 more tokens -> at most 1 draft; b gets what is left of 6 - 2 decode tokens - 1.
    assert ks == {"r0": 1, "r1": 3}


def test_budget_smaller_than_slots_is_refused():
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        Scheduler(max_num_seqs=8, max_queue=0, max_num_batched_tokens=4)


def seeded_seq(i: int, prompt_len: int, max_tokens: int = 40) -> Sequence:
    s = seq(i, prompt_len, max_tokens)
    s.params = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=3)
    return s


def test_a_seeded_sampled_sequence_shares_the_budget_like_any_other():
    """Budget 16 for 4 slots: seeded sampled sequences no longer draw from a fixed per-slot share (their text ignores K,
    `Sequence.coupled`), so the last of four decoding rows gets what its mates left, here nothing, while alone it gets
    the policy's K. The old fixed share gave it min(K, 3) in both cases."""
    grant_8 = lambda seqs, budget: [8] * len(seqs)  # noqa: E731

    alone = Scheduler(max_num_seqs=4, max_queue=0, max_num_batched_tokens=16)
    s = seeded_seq(9, 2)
    alone.add(s)
    run_step(alone)
    k_alone = {r.seq.request_id: r.max_draft for r in alone.schedule(grant_8).rows}["r9"]

    busy = Scheduler(max_num_seqs=4, max_queue=0, max_num_batched_tokens=16)
    mates = [seq(i, 2, max_tokens=40) for i in range(3)]
    for m in mates:
        busy.add(m)
    busy.add(seeded_seq(9, 2))
    run_step(busy)
    out = busy.schedule(grant_8)
    ks = {r.seq.request_id: r.max_draft for r in out.rows}
    assert k_alone == 8
    assert sum(1 + k for k in ks.values()) <= 16  # the budget still holds
    # Everyone shares what is left (16 - 4 decode tokens = 12), in running-list order.
    assert (ks["r0"], ks["r1"], ks["r2"], ks["r9"]) == (8, 4, 0, 0)


def test_update_rolls_back_rejected_drafts_cuts_at_a_stop_and_frees_the_slot_once():
    """`update` in counters: a verify row of 3 drafts with 1 accepted keeps the last token's and 1 draft's K/V; a stop
    at the second emitted token throws the rest of the run away and returns the slot through `release`, once."""
    from engine.select import Selection
    from engine.sequence import Finish

    released = []
    sched = Scheduler(max_num_seqs=2, max_queue=0, max_num_batched_tokens=16, release=lambda s: released.append(s.slot))
    a, b = seq(0, 4, max_tokens=20), seq(1, 4, max_tokens=20)
    sched.add(a)
    sched.add(b)
    run_step(sched)  # both prefilled, one token each: computed 4 of 5
    out = sched.schedule(lambda seqs, budget: [3] * len(seqs))
    assert [r.max_draft for r in out.rows] == [3, 3]

    def stop_at_second_token_of_b(s, sel, j):
        return Finish("stop", stop_reason="x") if s is b and j == 1 else None

    sels = [Selection([11, 12], num_accepted=1, logprobs=None), Selection([21, 22, 23], num_accepted=2, logprobs=None)]
    slot_b = b.slot
    delivered = sched.update(out, sels, stop_at_second_token_of_b)
    assert delivered == [2, 2]
    assert a.output_ids == [7, 11, 12] and a.num_computed == 4 + 1 + 1  # the decode token + 1 accepted draft
    assert a.spec.accepted_tokens == 1 and a.spec.target_passes == 1
    assert b.output_ids == [7, 21, 22] and b.is_finished and b.stop_reason == "x"
    assert b.spec.accepted_tokens == 2  # 2 accepted, both delivered (the stop came with the second)
    assert released == [slot_b] and b.slot is None and slot_b in sched.free_slots
    assert sched.take_finished() == [b] and sched.take_finished() == []
    sched.finish(b, "abort")  # already finished: nothing happens twice
    assert released == [slot_b] and b.finish_reason == "stop"
