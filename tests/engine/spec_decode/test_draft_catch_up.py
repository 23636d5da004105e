"""The draft model's catch-up pass is bounded by the per-step token budget (engine/spec_decode/draft_model.py): least
backlog first, the next sequence partly and without logits, the rest drafting in a later step; output unchanged."""

from __future__ import annotations

import torch

from engine.runners.base import ForwardBatch
from engine.sampling.params import SamplingParams
from engine.sequence import Sequence
from engine.spec_decode.draft_model import DraftModelProposer
from tests.helpers.engines import greedy, make_engine, run_all, tokens_of

VOCAB = 11


class RecordingRunner:
    """A draft runner that records every ForwardBatch and returns (total_logits, VOCAB) logits favouring token 3."""

    def __init__(self):
        self.batches: list[ForwardBatch] = []

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        self.batches.append(batch)
        logits = torch.zeros(batch.total_logits, VOCAB)
        logits[:, 3] = 5.0
        return logits

    def release_slot(self, slot: int) -> None:
        pass


def seq(slot: int, prompt_len: int, computed: int) -> Sequence:
    s = Sequence(f"r{slot}-0", f"r{slot}", 0, list(range(1, prompt_len + 1)), SamplingParams(temperature=0.0),
                 10_000, frozenset())
    s.slot = slot
    s.draft_num_computed = computed
    return s


def test_catch_up_takes_least_backlog_first_within_the_budget():
    runner = RecordingRunner()
    proposer = DraftModelProposer(runner, catch_up_budget=10)
    a, b, c = seq(0, 30, 27), seq(1, 30, 24), seq(2, 30, 0)  # backlogs 3, 6 and 30 tokens
    drafts = proposer.propose([c, a, b], [2, 2, 2])
    first = runner.batches[0]
    assert first.slot_ids == [0, 1, 2]  # a and b in full (9 tokens), then 1 token of c: 10 in all
    assert [len(t) for t in first.token_ids] == [3, 6, 1]
    assert first.num_logits == [1, 1, 0] and first.start_pos == [27, 24, 0]
    assert drafts.token_ids == [[], [3, 3], [3, 3]]  # c drafts nothing this step; a and b their 2 each
    assert drafts.draft_probs[0] is None and drafts.draft_probs[1].shape == (2, VOCAB)
    assert (a.draft_num_computed, b.draft_num_computed, c.draft_num_computed) == (31, 31, 1)
    assert all(sum(len(t) for t in bt.token_ids) <= 10 for bt in runner.batches)


def test_a_backlog_larger_than_the_budget_catches_up_over_steps():
    runner = RecordingRunner()
    proposer = DraftModelProposer(runner, catch_up_budget=8)
    s = seq(0, 20, 0)
    got = [proposer.propose([s], [1]).token_ids[0] for _ in range(3)]
    # 8 + 8 tokens without logits (never the last one: only the drafting pass may take it), then 4 and a draft.
    assert [b.num_logits for b in runner.batches[:3]] == [[0], [0], [1]]
    assert [len(b.token_ids[0]) for b in runner.batches[:3]] == [8, 8, 4]
    assert got == [[], [], [3]] and s.draft_num_computed == 20


def test_greedy_output_is_the_same_with_a_tiny_catch_up_budget(tiny_pair):
    """A budget of 24 tokens against prompts of up to ~70: catch-up is split over many steps, output unchanged."""
    target, draft = tiny_pair
    prompts = [[(7 * i + j) % 200 + 3 for j in range(10 + 6 * i)] for i in range(10)]
    want = {}
    for method in ("none", "draft"):
        eng = make_engine(target, method=method, draft=draft if method == "draft" else None, num_speculative_tokens=3,
                          speculative_policy="static", max_num_seqs=8, max_num_batched_tokens=24, max_model_len=256)
        for i, p in enumerate(prompts):
            eng.add_request(f"p{i}", p, greedy(10, ignore_eos=True))
        got = {rid: tokens_of(o) for rid, o in run_all(eng).items()}
        if method == "none":
            want = got
        else:
            assert got == want
            assert eng.counters.draft_tokens > 0
