"""Draft-model proposer: a small model with its own runner and slots proposes K tokens per sequence.

One batched draft pass per draft position: pass 1 catches each sequence's draft cache up with the tokens it has not
seen (the prompt the first time, later the tokens accepted since) and samples draft 1; pass j feeds draft j-1 and
samples draft j, for the sequences that still want more. Draft logits go through the same pipeline as the target's
(`process_logits`, with the earlier drafts in the history), so the draft distribution the rejection sampler divides by
is exactly the one the drafts were sampled from.

The draft runner uses the same slot ids as the target. Its counter `seq.draft_num_computed` rolls back to what the
target accepted; positions past it are overwritten on the next pass.
"""

from __future__ import annotations

import torch

from engine.runners.base import ForwardBatch, Runner
from engine.sampling.pipeline import RowContext, process_logits
from engine.sampling.sampler import probs_from_processed, sample_from_probs
from engine.sequence import Sequence
from engine.spec.base import Drafts, register_proposer


class DraftModelProposer:
    name = "draft"

    def __init__(self, runner: Runner):
        self.runner = runner

    def propose(self, seqs: list[Sequence], max_drafts: list[int]) -> Drafts:
        active = [(s, k) for s, k in zip(seqs, max_drafts, strict=True) if k > 0]
        probs: dict[Sequence, list[torch.Tensor]] = {s: [] for s, _ in active}  # one (V,) row per draft
        drafts: dict[Sequence, list[int]] = {s: [] for s in seqs}
        step = 0
        while active:
            rows = active
            if step == 0:  # catch-up pass: everything the draft cache lacks, up to and including the last token
                tokens = [s.all_ids[s.draft_num_computed:] for s, _ in rows]
                starts = [s.draft_num_computed for s, _ in rows]
            else:
                tokens = [[drafts[s][-1]] for s, _ in rows]
                starts = [s.num_tokens + step - 1 for s, _ in rows]
            batch = ForwardBatch(
                slot_ids=[s.slot for s, _ in rows], token_ids=tokens, start_pos=starts, num_logits=[1] * len(rows))
            logits = self.runner.execute(batch)  # (len(rows), V)
            for (s, _), t in zip(rows, tokens, strict=True):
                s.draft_num_computed += len(t)
            # Under a grammar each draft is sampled from the draft distribution masked by the state it would reach.
            ctxs = [RowContext(s.params, s.prompt_ids, s.output_ids + drafts[s], s.stop_token_ids,
                               s.grammar.allowed_after(drafts[s]) if s.grammar is not None else None)
                    for s, _ in rows]
            row_probs = probs_from_processed(process_logits(logits, ctxs))  # (R, V)
            greedy = torch.tensor([s.params.greedy for s, _ in rows], device=row_probs.device)
            sampled = sample_from_probs(row_probs, [s.generator for s, _ in rows])
            chosen = torch.where(greedy, row_probs.argmax(dim=-1), sampled).tolist()
            for i, ((s, _), tok) in enumerate(zip(rows, chosen, strict=True)):
                drafts[s].append(tok)
                probs[s].append(row_probs[i])
            step += 1
            active = [(s, k) for s, k in rows if len(drafts[s]) < k]
        return Drafts([drafts[s] for s in seqs],
                      [torch.stack(probs[s]) if s in probs and probs[s] else None for s in seqs])

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
    return DraftModelProposer(ctx.build_draft_runner())
