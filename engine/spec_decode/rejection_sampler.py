"""Speculative verification: keep the longest draft prefix the target agrees with, then add one token of the target's.

Terms (as vLLM v1's rejection_sampler.py):

- **accepted token**: draft token x at position j, kept with probability min(1, target_probs[j, x] / draft_probs[j, x])
  (greedy: kept iff x == argmax target_probs[j]). Acceptance stops at the first rejection.
- **recovered token**: drawn at the first rejected position j from the residual normalize(max(0, target_probs[j] -
  draft_probs[j])) (greedy: argmax target_probs[j]). With one-hot drafts (n-gram, `draft_probs` None) the residual is
  target_probs[j] with x zeroed, renormalized. Accepted-or-recovered then has exactly the target distribution
  (Leviathan et al. 2023; Chen et al. 2023).
- **bonus token**: when all k drafts are accepted, one more token drawn from the last target row (j = k) for free.

Each sequence emits its accepted prefix plus one recovered-or-bonus token: 1..k+1 tokens.

`draft_probs` and `target_probs` are *processed* distributions: both come out of the same logits pipeline
(`engine.sampling.pipeline.process_logits` then `engine.sampling.sampler.probs_from_processed`), row j computed as if
drafts 0..j-1 were already generated. That is what makes penalties, bias, top-k/p and min-p lossless too.

Randomness: a sequence with a generator draws, in this order, k uniforms (acceptance) then one more (the final
token, by inverse CDF: `engine.sampling.sampler.sample_from_probs`), from its own CPU generator, so it repeats whatever else is in the batch (but
not at another K: how many draws it consumes, and which token each decides, depend on k). Sequences without a
generator share torch's default generators (CPU for the acceptance uniforms, the device's for the final token's). Greedy sequences draw nothing.
The engine sends only unseeded requests here; seeded sampled ones are verified by `engine.spec_decode.coupled`, whose keyed
noise makes their text independent of K.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.sampling.sampler import sample_from_probs


def rejection_sample(
    draft_token_ids: Sequence[Sequence[int]],
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    greedy: Sequence[bool],
    generators: Sequence[torch.Generator | None] | None = None,
) -> list[list[int]]:
    """Verify each sequence's drafts; return per sequence its accepted draft prefix + one recovered-or-bonus token.

    draft_token_ids  per sequence, k_i >= 0 draft tokens
    draft_probs      `[sum k_i, V]` processed draft distribution per draft position, sequences in order;
                     None = one-hot drafts (n-gram proposer)
    target_probs     `[sum (k_i + 1), V]` processed target distribution, k_i + 1 rows per sequence, in order
    greedy           per sequence: verify by argmax (temperature 0)
    generators       per sequence: CPU generator for its random draws, or None for torch's default one (the list
                     None: no sequence has one, as in the engine)
    """
    num_seqs = len(draft_token_ids)
    generators = [None] * num_seqs if generators is None else generators
    ks = [len(d) for d in draft_token_ids]
    num_drafts = sum(ks)
    if len(greedy) != num_seqs or len(generators) != num_seqs:
        raise ValueError("rejection_sample needs one greedy flag and one generator slot per sequence")
    if target_probs.dim() != 2 or target_probs.shape[0] != num_drafts + num_seqs:
        raise ValueError(
            f"target_probs must have sum(k_i + 1) = {num_drafts + num_seqs} rows, got {tuple(target_probs.shape)}"
        )
    if draft_probs is not None and tuple(draft_probs.shape) != (num_drafts, target_probs.shape[1]):
        raise ValueError(
            f"draft_probs must be [sum k_i, V] = [{num_drafts}, {target_probs.shape[1]}], got {tuple(draft_probs.shape)}"
        )
    if num_seqs == 0:
        return []
    device = target_probs.device
    target_probs = target_probs.to(torch.float32)
    if draft_probs is not None:
        draft_probs = draft_probs.to(device=device, dtype=torch.float32)

    # Row offsets: sequence i's target rows start at target_start[i], its draft rows at draft_start[i].
    target_start, draft_start = [], []
    t = d = 0
    for k in ks:
        target_start.append(t)
        draft_start.append(d)
        t += k + 1
        d += k

    num_accepted = _count_accepted(
        draft_token_ids, ks, draft_probs, target_probs, greedy, generators, target_start
    )

    # One final row per sequence: the first rejected position (recovered) or the last row (bonus).
    final_idx = torch.tensor([target_start[i] + num_accepted[i] for i in range(num_seqs)], device=device)
    final_dist = target_probs[final_idx]  # (B, V)
    recovered = [i for i in range(num_seqs) if num_accepted[i] < ks[i] and not greedy[i]]
    if recovered:
        rejected_ids = torch.tensor([draft_token_ids[i][num_accepted[i]] for i in recovered], device=device)
        draft_rows = None
        if draft_probs is not None:
            draft_rows = draft_probs[
                torch.tensor([draft_start[i] + num_accepted[i] for i in recovered], device=device)
            ]
        final_dist[recovered] = _residual(final_dist[recovered], draft_rows, rejected_ids)

    final = final_dist.argmax(dim=-1)  # (B,) greedy sequences: recovered/bonus token is the target argmax
    sampled = [i for i in range(num_seqs) if not greedy[i]]
    if sampled:
        final[sampled] = sample_from_probs(final_dist[sampled], [generators[i] for i in sampled])
    final_l = final.tolist()

    return [list(draft_token_ids[i][: num_accepted[i]]) + [final_l[i]] for i in range(num_seqs)]


def _count_accepted(
    draft_token_ids: Sequence[Sequence[int]],
    ks: list[int],
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    greedy: Sequence[bool],
    generators: Sequence[torch.Generator | None],
    target_start: list[int],
) -> list[int]:
    """Number of accepted drafts per sequence (the length of its accepted prefix); one host sync for the batch."""
    num_drafts = sum(ks)
    if num_drafts == 0:
        return [0] * len(ks)
    device = target_probs.device
    flat_ids = torch.tensor(
        [x for ids in draft_token_ids for x in ids], dtype=torch.long, device=device
    )  # (D,)
    rows = torch.tensor(
        [target_start[i] + j for i, k in enumerate(ks) for j in range(k)], device=device
    )  # (D,)
    target_rows = target_probs[rows]  # (D, V): the target row that scores each draft token
    greedy_pos = torch.tensor(
        [g for g, k in zip(greedy, ks, strict=True) for _ in range(k)], dtype=torch.bool, device=device
    )

    accepted = torch.zeros(num_drafts, dtype=torch.bool, device=device)
    if any(g and k for g, k in zip(greedy, ks, strict=True)):
        accepted = torch.where(greedy_pos, target_rows.argmax(dim=-1) == flat_ids, accepted)
    if any(not g and k for g, k in zip(greedy, ks, strict=True)):
        target_p = target_rows.gather(1, flat_ids[:, None]).squeeze(1)  # (D,)
        if draft_probs is None:
            draft_p = torch.ones_like(target_p)  # one-hot drafts
        else:
            draft_p = draft_probs.gather(1, flat_ids[:, None]).squeeze(1)
        uniforms = _uniforms(ks, greedy, generators).to(device)  # (D,), unused (zero) at greedy positions
        accepted = torch.where(greedy_pos, accepted, _accepted(uniforms, draft_p, target_p))

    accepted_l = accepted.tolist()
    counts = []
    pos = 0
    for k in ks:
        n = 0
        while n < k and accepted_l[pos + n]:
            n += 1
        counts.append(n)
        pos += k
    return counts


def _uniforms(
    ks: list[int], greedy: Sequence[bool], generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """U[0, 1) per draft position `[sum k_i]` on CPU: k_i draws from sequence i's generator (none if greedy)."""
    parts = []
    unseeded = [
        i
        for i, (g, gen, k) in enumerate(zip(greedy, generators, ks, strict=True))
        if not g and gen is None and k
    ]
    shared = torch.rand(sum(ks[i] for i in unseeded)) if unseeded else None
    offset = 0
    for i, k in enumerate(ks):
        if greedy[i] or k == 0:
            parts.append(torch.zeros(k))
        elif generators[i] is not None:
            parts.append(torch.rand(k, generator=generators[i]))
        else:
            parts.append(shared[offset : offset + k])
            offset += k
    return torch.cat(parts)


def _accepted(uniforms: torch.Tensor, draft_p: torch.Tensor, target_p: torch.Tensor) -> torch.Tensor:
    """Accept with probability min(1, target_p / draft_p): u < target_p / draft_p, written without dividing.

    draft_p == 0 (the draft emitted a token it gave no mass: only by rounding) accepts iff target_p > 0.
    """
    return uniforms * draft_p < target_p


def _residual(
    target_rows: torch.Tensor, draft_rows: torch.Tensor | None, rejected_ids: torch.Tensor
) -> torch.Tensor:
    """Unnormalized recovery distribution `[R, V]`: max(0, target - draft), or target with the rejected token zeroed
    for one-hot drafts. A residual with no mass left (target == draft up to rounding) falls back to the target row.
    """
    if draft_rows is None:
        residual = target_rows.scatter(1, rejected_ids[:, None], 0.0)
    else:
        residual = (target_rows - draft_rows).clamp_(min=0.0)
    empty = residual.sum(dim=-1, keepdim=True) <= 0
    return torch.where(empty, target_rows, residual)
