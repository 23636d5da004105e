"""Draft-model proposer: a small model with its own runner and slots proposes K tokens per sequence.

One batched draft pass per draft position: pass 1 catches each sequence's draft cache up with the tokens it has not
seen (the prompt the first time, later the tokens accepted since) and samples draft 1; pass j feeds draft j-1 and
samples draft j, for the sequences that still want more. Draft logits go through the same pipeline as the target's
(`process_logits`, with the earlier drafts in the history), so the draft distribution the rejection sampler divides by
is exactly the one the drafts were sampled from. Seeded sampled sequences (`Sequence.coupled`) take draft j as
argmax(log draft_probs + g) with g the keyed Gumbel noise of the output position it proposes (`engine.spec_decode.coupled`),
the noise the target's verify uses there: a draft is accepted iff it is the target's own sample.

The draft runner uses the same slot ids as the target. Its counter `seq.draft_num_computed` rolls back to what the
target accepted; positions past it are overwritten on the next pass.

Catch-up is bounded: while a sequence runs at K = 0 its draft cache falls behind (the whole prompt, the first time),
and an unbounded pass 1 after a stretch of K = 0 at concurrency 64 fed the draft 64 x (prompt + output) tokens at
once: seconds on a CPU, and a pass no accelerator's memory or Neuron bucket was sized for. Pass 1 takes at most
`catch_up_budget` tokens (the engine's per-step token budget): the sequences closest to caught up first, drafting
this step; the next one catches up partly (no logits); the rest get no drafts this step (the policy sees a short
supply, as for an n-gram miss) and catch up in later steps.
"""

from __future__ import annotations

import torch

from engine.runners.base import ForwardBatch, Runner
from engine.sampling.pipeline import RowContext, process_logits
from engine.sampling.sampler import probs_from_processed, sample_from_probs
from engine.sequence import Sequence
from engine.spec_decode.base import Drafts, register_proposer
from engine.spec_decode.coupled import coupled_sample, gumbel_noise


class DraftModelProposer:
    name = "draft"

    def __init__(self, runner: Runner, catch_up_budget: int = 512):
        self.runner = runner
        self.catch_up_budget = max(1, catch_up_budget)

    def propose(self, seqs: list[Sequence], max_drafts: list[int]) -> Drafts:
        active = [(s, k) for s, k in zip(seqs, max_drafts, strict=True) if k > 0]
        probs: dict[Sequence, list[torch.Tensor]] = {s: [] for s, _ in active}  # one (V,) row per draft
        drafts: dict[Sequence, list[int]] = {s: [] for s in seqs}
        step = 0
        while active:
            extra: list[tuple[Sequence, list[int]]] = []  # a partial catch-up riding along, without logits
            if step == 0:  # catch-up pass: what the draft cache lacks, up to and including the last token
                rows, partial = self._catch_up_plan(active)
                tokens = [s.all_ids[s.draft_num_computed:] for s, _ in rows]
                if partial is not None:
                    seq, n = partial
                    extra.append((seq, seq.all_ids[seq.draft_num_computed:seq.draft_num_computed + n]))
                starts = [s.draft_num_computed for s, _ in rows]
            else:
                rows = active
                tokens = [[drafts[s][-1]] for s, _ in rows]
                starts = [s.num_tokens + step - 1 for s, _ in rows]
            batch = ForwardBatch(
                slot_ids=[s.slot for s, _ in rows] + [s.slot for s, _ in extra], token_ids=tokens + [t for _, t in extra],
                start_pos=starts + [s.draft_num_computed for s, _ in extra],
                num_logits=[1] * len(rows) + [0] * len(extra))
            logits = self.runner.execute(batch)  # (len(rows), V): the partial row asks for none
            for s, t in zip([s for s, _ in rows + extra], tokens + [t for _, t in extra], strict=True):
                s.draft_num_computed += len(t)
            if not rows:
                break
            # Under a grammar each draft is sampled from the draft distribution masked by the state it would reach.
            ctxs = [RowContext(s.params, s.prompt_ids, s.output_ids + drafts[s], s.stop_token_ids,
                               s.grammar.allowed_after(drafts[s]) if s.grammar is not None else None)
                    for s, _ in rows]
            row_probs = probs_from_processed(process_logits(logits, ctxs))  # (R, V)
            chosen = self._choose(row_probs, [s for s, _ in rows], step)
            for i, ((s, _), tok) in enumerate(zip(rows, chosen, strict=True)):
                drafts[s].append(tok)
                probs[s].append(row_probs[i])
            step += 1
            active = [(s, k) for s, k in rows if len(drafts[s]) < k]
        return Drafts([drafts[s] for s in seqs],
                      [torch.stack(probs[s]) if s in probs and probs[s] else None for s in seqs])

    def _catch_up_plan(self, active: list[tuple[Sequence, int]]
                       ) -> tuple[list[tuple[Sequence, int]], tuple[Sequence, int] | None]:
        """(rows that catch up fully and draft this step, least backlog first, within the budget; the next row and
        how many of its backlog tokens fit in what is left, or None)."""
        budget = self.catch_up_budget
        rows: list[tuple[Sequence, int]] = []
        for s, k in sorted(active, key=lambda sk: sk[0].num_tokens - sk[0].draft_num_computed):
            backlog = s.num_tokens - s.draft_num_computed  # >= 1: the last token is always new to the draft
            if backlog <= budget:
                rows.append((s, k))
                budget -= backlog
                continue
            # Leave at least the last token for the pass that drafts: only that pass may produce its logits.
            return rows, ((s, min(budget, backlog - 1)) if budget > 0 else None)
        return rows, None

    @staticmethod
    def _choose(row_probs: torch.Tensor, seqs: list[Sequence], step: int) -> list[int]:
        """Draft `step` of each sequence from its processed draft distribution `[R, V]`: argmax for greedy rows, the
        keyed Gumbel-max of output position len(output_ids) + step for coupled rows, a free sample for the rest."""
        chosen = row_probs.argmax(dim=-1)  # (R,)
        free = [i for i, s in enumerate(seqs) if not s.params.greedy and not s.coupled]
        if free:
            chosen[free] = sample_from_probs(row_probs[free])
        keyed = [i for i, s in enumerate(seqs) if s.coupled]
        if keyed:
            noise = torch.cat([gumbel_noise(seqs[i].params.seed, seqs[i].index, [len(seqs[i].output_ids) + step],
                                            row_probs.shape[1]) for i in keyed])  # (C, V)
            chosen[keyed] = coupled_sample(row_probs[keyed], noise)
        return chosen.tolist()

    def on_verified(self, seq: Sequence, num_accepted: int) -> None:
        # Called before the emitted tokens are appended: num_tokens is still T (last token + drafts were positions
        # T-1 .. T-1+k). Draft KV is valid through the accepted drafts: positions < T + num_accepted.
        seq.draft_num_computed = min(seq.draft_num_computed, seq.num_tokens + num_accepted)

    def release(self, seq: Sequence) -> None:
        seq.draft_num_computed = 0
        if seq.slot is not None:
            self.runner.release_slot(seq.slot)


@register_proposer("draft")
def _make_draft(ctx) -> DraftModelProposer:
    return DraftModelProposer(ctx.build_draft_runner(), catch_up_budget=ctx.settings.engine.max_num_batched_tokens)
