"""Speculation policy: how many draft tokens each decoding sequence gets this step.

Goal: the most delivered tokens per second, and never much less than the better of K = 0 and the best fixed K, at
any load, on any device. A fitted cost model alone cannot promise that (a linear fit of a CPU's step time is off by
more than the margin between the choices), and a bandit over realized goodput ranks near-tied choices by luck (a
4-row step either accepts a run or not). So goodput is split in its two halves, each measured where it is cheap:

- **tokens**, from ONE estimate shared by every arm and fed by every verify. Drafts accept in streaks: P(draft j
  accepted | drafts 1..j-1 accepted) rises with j (a first draft often wrong, then runs), and one per-token rate a
  fitted to such verifies (E(k) = 1 + sum a^j, the earlier geometric model) undervalues deep drafts against shallow
  ones (true conditionals 0.5, 0.8, 0.9, 0.9: E(4)/E(2) = 1.36, the geometric fit 1.27), so the policy drafted short
  where K_max won (issue 14). The token model is per position instead (`PositionAcceptance`): global decayed counts
  `at_risk[j]`, `accepted[j]` (shape (K_max + 1,), index j = draft position, 0 unused) of verifies with a draft at j
  and drafts 1..j-1 accepted, and of those that accepted draft j, give the conditional alpha_j. A position never
  reached borrows the one below it (BORROW_WEIGHT pseudo-verifies of alpha_{j-1}; position 1 starts at
  `prior_acceptance`): no prior makes a deep cap look good before a verify has reached it. A position's counts
  decay when a verify reaches it, and by STALE_DECAY per drafting step otherwise, so a few unlucky probe rows at a
  deep position relax toward the position below until it is re-measured. Per sequence, its own evidence (the
  geometric ML a_i of its verifies, recency-weighted over ~20 verifies and pulled toward the global a of the same
  kind) moves every position's log-odds by logit(a_i) - logit(a): a shift keeps every alpha in [0, 1] whatever the
  ratio, is 0 for a sequence without evidence, and prices a sequence that rejects everything near 1 token within a
  few verifies (the engine's per-row calls are `record_verify`, whose counts live on the Sequence). And the
  proposer's *supply* per sequence, q_ij = P(at least j drafts | asked for j or more), which is 1 for a draft model
  and what n-gram really produces (short or empty drafts). A row at cap k delivers
  E_i(k) = 1 + sum_{j<=k} prod_{m<=j} q_im alpha_im tokens in expectation (`token_curve`);
- **step time**, per batch-size cell and *arm*, from that arm's own steps only (`engine.spec_decode.goodput.StepTimes`).

Arms: a uniform cap K for every adaptive row, for each allowed K (K = 0 and K_max included, so the fixed choices the
policy is judged against are always measured), and the cost model's per-sequence allocation (`MODEL_ARM`): with
the same token curves, sequence i gets k_i = min(K, largest j with E_i(j) - E_i(j-1) >= theta) (that gain is
prod_{m<=j} q_im alpha_im, falling with j), theta = (tokens/s at K=0) * (seconds per extra draft token), priced whole
by `StepCostModel` (opted-out rows at K = 0, prompt tokens prefilled beside them). An arm's score is sum_i E_i(k_i)
over the step's rows / its step time here; the policy runs the best. An arm with no time here borrows one:
interpolated between K = 0 and K_max (a verify and a draft pass cost about linearly in K), or from the nearest cell
scaled on a common arm.

Probes: K = 0, K_max, the caps next to the best (`_edges`: the K = 0..K_max line misprices them most where the step
time bends, and their steps reach the draft position past the best cap) and any arm within `close` of the best are
measured in every cell they matter in (a short burst, one step more after a K = 0 stretch, whose first draft step
also pays the draft model's catch-up and is not timed); then one re-measure every `interval` decisions of a cell,
the interval doubling (to `probe_max`) each time a re-measure leaves the ranking as it was and reset when it changes
it. A probe of a bad arm costs goodput, so probes may lose at most `probe_share` of the cell's time (counted with
their predicted loss). Steps with prefill run the cell's best arm and time nothing (their time is mostly the
prompt's). A regime change re-ranks at once when acceptance or supply moves (shared estimates) or the running arm's
time moves; a cheaper other arm is found by the re-measures.

Every request that allows speculation adapts: greedy rows are deterministic at any K, and seeded sampled rows are
verified by the keyed Gumbel coupling (`engine.spec_decode.coupled`), whose text does not depend on K either. A static
policy (`--speculative-policy static`) always grants K_max.

Both implement `engine.spec_decode.protocol.SpecPolicy`, the calls the engine makes.
"""
from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Sequence as Seq

from engine.sequence import Sequence
from engine.spec_decode.acceptance import (
    PRIOR_COUNT,
    PositionAcceptance,
    Supply,
    logit,
    record_verify,
    sigmoid,
)
from engine.spec_decode.cost_model import StepCostModel
from engine.spec_decode.goodput import MODEL_ARM, StepTimes, batch_cell
from engine.spec_decode.protocol import SpecPolicy
from engine.stats import StepRecord

PRIOR_WEIGHT = 1.0  # pseudo-observations of the global rate in each sequence's acceptance
SUPPLY_PRIOR = 0.5  # pseudo-observations of the global supply in each sequence's supply
GLOBAL_DECAY = 0.98  # per verify, for the global acceptance and supply (~50 verifies)
SUPPLY_DECAY = 0.9  # per verify, for a sequence's supply (n-gram's matches come and go with the text)


class StaticPolicy:
    """Always K_max (for requests that allow speculation)."""

    def __init__(self, k_max: int, allowed_k: Seq[int] | None = None):
        self.k = max(k for k in (allowed_k or range(k_max + 1)) if k <= k_max) if k_max else 0

    def choose_k(self, seqs: list[Sequence], budget: int, prefill_tokens: int = 0) -> list[int]:
        return [self.k if s.params.speculative else 0 for s in seqs]

    def record_verify(self, seq: Sequence, num_draft: int, num_accepted: int) -> None:
        pass  # its K never depends on acceptance

    def observe(self, rec: StepRecord) -> None:
        pass


class AdaptivePolicy:
    def __init__(self, k_max: int, allowed_k: Seq[int] | None = None, *, prior_acceptance: float = 0.6,
                 probe_every: int = 16, probe_every_new: int = 4, probe_max: int = 256, probe_share: float = 0.02,
                 close: float = 0.03, burst: int = 2, model_arm: bool = True, table: StepTimes | None = None):
        self.ks = sorted(k for k in (allowed_k if allowed_k is not None else range(k_max + 1)) if k <= k_max)
        if 0 not in self.ks:
            self.ks.insert(0, 0)
        self.k_max = self.ks[-1]
        self.cost = StepCostModel()
        self.times = table or StepTimes()
        # Decayed totals over all sequences' verifies, geometric ML form like each sequence's own: the baseline a
        # sequence's own acceptance is compared with (`_shift`).
        self.global_successes = PRIOR_COUNT * prior_acceptance
        self.global_failures = PRIOR_COUNT * (1.0 - prior_acceptance)
        self.positions = PositionAcceptance(self.k_max, prior_acceptance, GLOBAL_DECAY)  # the token model's curve
        self.global_supply = Supply(self.k_max, GLOBAL_DECAY)
        self.supply: weakref.WeakKeyDictionary[Sequence, Supply] = weakref.WeakKeyDictionary()
        self.probe_every, self.probe_every_new, self.probe_max = probe_every, probe_every_new, probe_max
        self.probe_share, self.close, self.burst = probe_share, close, burst
        self.model_arm = model_arm and len(self.ks) > 1
        self.steps = 0  # steps observed: the clock samples are stamped with
        self.cell_steps: dict[int, int] = {}  # cell -> decode-only decisions taken there
        self.cell_seconds: dict[int, float] = {}  # cell -> seconds of decode-only steps decided there
        self.probe_loss: dict[int, float] = {}  # cell -> seconds the probes there are estimated to have lost
        self.interval: dict[int, int] = {}  # cell -> decisions between re-measures (grows while the ranking holds)
        self.next_refresh: dict[int, int] = {}  # cell -> decision count of the next re-measure
        self._burst: dict[int, tuple[int, int]] = {}  # cell -> (arm, decisions left) of the probe under way
        self._check: dict[int, int] = {}  # cell -> best arm before the re-measure under way
        # cell -> (seconds, draft share, step) of MODEL_ARM's steps
        self.model_samples: dict[int, deque[tuple[float, float, int]]] = {}
        self.tried_at: dict[int, int] = {}  # arm -> step it last ran
        self.last_arm: int | None = None  # the arm of the latest decision (tests and replays read it)
        self.last_probe = False  # whether the latest decision was a probe
        self.last_scores: dict[int, float] = {}  # arm -> score (tokens/s) at the latest decision
        self._prev: tuple[int, bool] | None = None  # (arm, probe?) of the previous decode-only decision
        # (cell, arm, seconds lost per second of the step or 0, seqs, K asked per seq) the next observe() scores
        self._pending: tuple[int, int, float, list[Sequence], list[int], bool, list[bool]] | None = None
        self._mask: list[bool] = []  # adaptive rows of the step being decided

    # -- the shared estimates ------------------------------------------------------------------------------------

    @property
    def global_acceptance(self) -> float:
        return self.global_successes / (self.global_successes + self.global_failures)

    def acceptance(self, seq: Sequence) -> float:
        s, f = seq.accept_successes, seq.accept_failures
        return (s + PRIOR_WEIGHT * self.global_acceptance) / (s + f + PRIOR_WEIGHT)

    def _shift(self, seq: Sequence) -> float:
        """Log-odds by which this sequence's own evidence moves every position's conditional: logit(a_i) -
        logit(a_global), both the geometric ML estimates of the same verifies' kind (a_i pulled toward the global
        rate, so 0 for a sequence without evidence). One shift, not per-sequence per-position counts: a sequence has
        ~20 verifies of evidence (ACCEPT_DECAY), too few to fit K_max conditionals (its deep positions would rest on
        a handful of verifies, and at c=1 the same verifies feed the global curve anyway), but enough to say it
        accepts better or worse than the rest; in log-odds every alpha stays in (0, 1). ACCEPT_DECAY is 0.95, not
        0.9: with streaky acceptance a few first-draft rejections in a row are common, and a 10-verify window read
        them as a bad sequence (c=1: K = 0 stretches, 0.72-0.99x the best cap over 12 seeds; 0.95: 0.986-1.002x),
        while a new sequence that rejects everything still reaches the same low a_i after as many verifies."""
        return logit(self.acceptance(seq)) - logit(self.global_acceptance)

    def _global_logits(self) -> list[float]:
        """logit(alpha_j) of the global per-position conditionals, j = 0..K_max (shape (K_max + 1,); index 0
        unused)."""
        return [logit(a) for a in self.positions.conditionals()]

    def token_curve(self, seq: Sequence, global_hazards: list[float] | None = None,
                    global_logits: list[float] | None = None) -> list[float]:
        """E[tokens delivered] by this row at k = 0..K_max (shape (K_max + 1,)):
        E(k) = 1 + sum_{j<=k} prod_{m<=j} q_m alpha_m, with q_m the row's supply hazard and alpha_m the global
        conditional acceptance at position m moved by the row's own log-odds shift."""
        shift = self._shift(seq)
        own = self.supply.get(seq)
        gh = global_hazards or self._global_hazards()
        gl = global_logits or self._global_logits()
        out, p = [1.0], 1.0  # p = P(draft j exists and is accepted, with all before it)
        for j in range(1, self.k_max + 1):
            g = gh[j]
            h = g if own is None else (own.survived[j] + SUPPLY_PRIOR * g) / (own.at_risk[j] + SUPPLY_PRIOR)
            p *= h * sigmoid(gl[j] + shift)
            out.append(out[-1] + p)
        return out

    def _global_hazards(self) -> list[float]:
        return [1.0] + [self.global_supply.hazard(j) for j in range(1, self.k_max + 1)]

    @property
    def arms(self) -> list[int]:
        """Arms available now: every allowed uniform cap, and the model's allocation once the cost model is fitted."""
        return list(self.ks) + ([MODEL_ARM] if self.model_arm and self.cost.ready else [])

    # -- choosing ------------------------------------------------------------------------------------------------

    def choose_k(self, seqs: list[Sequence], budget: int, prefill_tokens: int = 0) -> list[int]:
        """K per decoding sequence. `prefill_tokens`: prompt tokens expected to run in the same step."""
        self._pending = None
        if len(self.ks) == 1 or not any(s.params.speculative for s in seqs):
            return self.allocate(seqs, 0, prefill_tokens)
        cell = batch_cell(len(seqs))
        self._mask = [s.params.speculative for s in seqs]  # adaptive rows
        allocs = {a: self.allocate(seqs, a, prefill_tokens, self._mask) for a in self.arms}
        if MODEL_ARM in allocs and any(allocs[MODEL_ARM] == allocs[k] for k in self.ks):
            del allocs[MODEL_ARM]  # the model allocates a uniform cap: that cap's arm, already measured as such
        arm, loss = self._pick_arm(cell, seqs, allocs, learn=prefill_tokens == 0)
        self.tried_at[arm] = self.steps
        self.last_arm = arm
        if prefill_tokens == 0:  # drafts asked per row, within the room the scheduler leaves
            asked = [min(k, max(0, s.max_total_len - s.num_tokens - 1)) for s, k in zip(seqs, allocs[arm], strict=True)]
            self._pending = (cell, arm, loss, seqs, asked, self.last_probe, self._mask)
        return allocs[arm]

    def _step_times(self, cell: int, seqs: list[Sequence], allocs: dict[int, list[int]]) -> dict[int, float | None]:
        """Seconds of a step of each arm here: measured, else interpolated between K = 0 and K_max, else borrowed.
        The model arm's allocation moves with the estimates, so its samples are shifted to today's allocation along
        the K = 0 .. K_max line (its time is that line's, plus what its own samples say it differs by)."""
        now, k_max = self.steps, self.k_max
        times = {a: self.times.local(cell, a, now) if a != MODEL_ARM else None for a in allocs}
        frac = {a: self._draft_share(self._mask, ks) for a, ks in allocs.items()}

        def interpolate(t: dict[int, float | None]) -> None:
            t0, tk = t.get(0), t.get(k_max)
            if t0 is None or tk is None:
                return
            for a in t:
                if t[a] is None:
                    t[a] = t0 + (tk - t0) * frac[a]
            if MODEL_ARM in t and (own := self.model_samples.get(cell)):
                t[MODEL_ARM] += sum(sec - (t0 + (tk - t0) * f) for sec, f, _ in own) / len(own)

        interpolate(times)
        times = self.times.borrow(cell, times, now)
        interpolate(times)
        return times

    def _last_step(self, cell: int, arm: int) -> int:
        """Step of the newest time of `arm` in this cell; -1 if none."""
        if arm == MODEL_ARM:
            return self.model_samples[cell][-1][2] if self.model_samples.get(cell) else -1
        return self.times.last_step(cell, arm)

    def _measured(self, cell: int, arm: int) -> bool:
        """Whether `arm` has a time of its own in this cell."""
        if arm == MODEL_ARM:
            return len(self.model_samples.get(cell, ())) >= self.times.min_samples
        return self.times.local(cell, arm, self.steps) is not None

    def _draft_share(self, mask: list[bool], ks: list[int]) -> float:
        """Mean K over the adaptive rows (`mask`), as a share of K_max."""
        mine = [k for a, k in zip(mask, ks, strict=True) if a]
        return sum(mine) / (max(len(mine), 1) * self.k_max)

    def _pick_arm(self, cell: int, seqs: list[Sequence], allocs: dict[int, list[int]],
                  learn: bool) -> tuple[int, float]:
        """(arm, predicted share of the step's time it loses against the best: > 0 only for probes)."""
        self.last_probe = False
        gh, gl = self._global_hazards(), self._global_logits()
        curves = [self.token_curve(s, gh, gl) for s in seqs]
        rooms = [max(0, s.max_total_len - s.num_tokens - 1) for s in seqs]
        times = self._step_times(cell, seqs, allocs)
        unknown = [a for a, t in times.items() if t is None]
        if unknown and not learn:  # a step with prefill times nothing, so an unmeasured probe there never ends:
            return 0, 0.0  # no drafts until a decode-only step has measured the arms
        if unknown:  # measured nowhere yet: K = 0 and K_max first (the rest interpolate), each until it has a time
            self.last_probe = True
            if self.last_arm in unknown:
                return self.last_arm, 0.0
            return min(unknown, key=lambda a: (a not in (0, self.k_max), self.tried_at.get(a, -1))), 0.0
        tokens = {a: sum(c[min(k, r, self.k_max)] for c, k, r in zip(curves, ks, rooms, strict=True))
                  for a, ks in allocs.items()}
        score = self.last_scores = {a: tokens[a] / max(times[a], 1e-12) for a in allocs}
        best = max(score, key=lambda a: score[a])
        if not learn:  # nor an arm whose time here is only interpolated or borrowed (it would never be measured)
            return max((a for a in score if a == 0 or self._measured(cell, a)), key=lambda a: score[a]), 0.0

        def loss(a: int) -> float:
            return max(0.0, 1.0 - score[a] / score[best])

        if cell in self._burst:  # a probe under way runs its burst out
            arm, left = self._burst[cell]
            if left > 1:
                self._burst[cell] = (arm, left - 1)
            else:
                del self._burst[cell]
            if arm in score:
                self.last_probe = True
                return arm, loss(arm)
        n = self.cell_steps[cell] = self.cell_steps.get(cell, 0) + 1
        if cell in self._check:  # a re-measure has run: did it change the ranking?
            kept = self._check.pop(cell) == best
            self.interval[cell] = min(2 * self.interval.get(cell, self.probe_every), self.probe_max) if kept \
                else self.probe_every
            self.next_refresh[cell] = n + self.interval[cell]
        edges = self._edges(best)
        matters = [a for a in score if a != best and (a in edges or loss(a) <= self.close)]
        missing = [a for a in matters if not self._measured(cell, a)]
        refresh = n >= self.next_refresh.setdefault(cell, n + self.probe_every)
        if missing and n % self.probe_every_new == 0:
            pool = missing
        elif refresh:
            pool = [a for a in score if a != best and (a in edges or loss(a) <= 0.1)]
        else:
            return best, 0.0
        room = self.probe_share * self.cell_seconds.get(cell, 0.0) - self.probe_loss.get(cell, 0.0)
        # One step more where there is no time here yet, or where the switch from K = 0 makes the first step a
        # draft model's catch-up (untimed): each probe then leaves `burst` timed samples (min_samples).
        switch = self._prev is not None and self._prev[0] == 0
        length = {a: self.burst + (not self._measured(cell, a) or (switch and a != 0)) for a in pool}
        pool = [a for a in pool if length[a] * times[a] * loss(a) <= room]
        if not pool:
            return best, 0.0
        pick = min(pool, key=lambda a: self._last_step(cell, a))
        if length[pick] > 1:
            self._burst[cell] = (pick, length[pick] - 1)
        if refresh and pick not in missing:
            self._check[cell] = best
            self.next_refresh[cell] = n + self.interval.get(cell, self.probe_every)
        self.last_probe = True
        return pick, loss(pick)

    def _edges(self, best: int) -> set[int]:
        """Arms measured wherever they matter whatever their score: K = 0 and K_max (the fixed choices the policy is
        judged against) and the uniform caps next to the best one. A neighbour's score rests on an interpolated time
        until it is measured, and the K = 0 .. K_max line is off most where the step time bends (a verify growing
        past a device's knee between K and K + 1), which is where the neighbour and the best swap; its probe also
        brings the token model evidence at the draft position past the best cap, which only such steps reach."""
        out = {0, self.k_max}
        if best >= 0:
            i = self.ks.index(best)
            out.update(self.ks[max(i - 1, 0):i + 2])
        return out

    def allocate(self, seqs: list[Sequence], arm: int, prefill_tokens: int = 0,
                 adaptive: list[bool] | None = None) -> list[int]:
        """K per sequence under `arm`: opted-out rows 0, adaptive rows (all others) the arm's K.
        `adaptive`: which rows adapt, if the caller has it already."""
        if adaptive is None:
            adaptive = [s.params.speculative for s in seqs]
        fixed = [0] * len(seqs)  # the K of rows that do not adapt (opted out)
        mine = [s for s, a in zip(seqs, adaptive, strict=True) if a]
        if arm == MODEL_ARM:
            others = [(s, k) for s, k, a in zip(seqs, fixed, adaptive, strict=True) if not a]
            ks = self._model_allocation(mine, others, prefill_tokens)
        else:
            ks = [arm] * len(mine)
        it = iter(ks)
        return [next(it) if a else k for k, a in zip(fixed, adaptive, strict=True)]

    def _model_allocation(self, seqs: list[Sequence], others: list[tuple[Sequence, int]],
                          prefill_tokens: int) -> list[int]:
        """The cost model's allocation for the adaptive `seqs`; `others` (sequence, fixed K) share the step."""
        if not seqs or not self.cost.ready:
            return [self.ks[-1]] * len(seqs)
        gh, gl = self._global_hazards(), self._global_logits()
        curves = [self.token_curve(s, gh, gl) for s in seqs]  # the token model the arms are scored with
        # The rest of the step at any K: its rows, their drafts (capped by room left, as the scheduler does), the
        # tokens they are expected to emit, and the prefill.
        b = len(seqs) + len(others)
        other_k = [max(0, min(k, s.max_total_len - s.num_tokens - 1)) for s, k in others]
        fixed_draft, fixed_passes = sum(other_k), max(other_k, default=0)
        fixed_tokens = sum(self.token_curve(s, gh, gl)[min(k, self.k_max)]
                           for (s, _), k in zip(others, other_k, strict=True))

        def step_time(alloc: list[int]) -> float:
            return max(self.cost.predict(b, fixed_draft + sum(alloc), max(fixed_passes, *alloc), prefill_tokens), 1e-9)

        t0 = step_time([0] * len(seqs))
        per_draft = max(self.cost.predict(b, fixed_draft + 1, fixed_passes, prefill_tokens) - t0, 1e-9)
        theta = ((len(seqs) + fixed_tokens) / t0) * per_draft  # tokens a draft must add to pay for itself
        best_rate, best_alloc = -1.0, [0] * len(seqs)
        # A draft's gain E(k) - E(k-1) = prod_{m<=k} q_m alpha_m falls with k (every factor <= 1): a cap only clips.
        own = [self._own_k(c, self.k_max, theta) for c in curves]
        for k in self.ks:
            alloc = [o if o <= k else self._own_k(c, k, theta) for c, o in zip(curves, own, strict=True)]
            rate = (fixed_tokens + sum(c[kk] for c, kk in zip(curves, alloc, strict=True))) / step_time(alloc)
            if rate > best_rate:
                best_rate, best_alloc = rate, alloc
        return best_alloc

    def _own_k(self, curve: list[float], cap: int, theta: float) -> int:
        """Largest allowed k <= cap whose last draft is still worth its cost (E(k) - E(k-1) >= theta)."""
        own = 0
        for k in self.ks:
            if 0 < k <= cap and curve[k] - curve[k - 1] >= theta:
                own = k
        return own

    # -- learning ------------------------------------------------------------------------------------------------

    def record_verify(self, seq: Sequence, num_draft: int, num_accepted: int) -> None:
        record_verify(seq, num_draft, num_accepted)

    def observe(self, rec: StepRecord) -> None:
        self.steps += 1
        if rec.total_draft:  # a K = 0 stretch reaches no position: nothing to re-rank, and the curve stays as it was
            self.positions.age()
        verified = rec.num_accepted if rec.num_verified_accepted is None else rec.num_verified_accepted
        for d, acc in zip(rec.num_draft, verified, strict=True):
            if d:
                self.global_successes = GLOBAL_DECAY * self.global_successes + acc
                self.global_failures = GLOBAL_DECAY * self.global_failures + (1.0 if acc < d else 0.0)
                self.positions.add(d, acc)
        pending, self._pending = self._pending, None
        if pending and rec.batch_size == len(pending[3]) and not rec.num_prefill_tokens and rec.seconds > 0:
            cell, arm, loss, seqs, asked, probe, mask = pending
            # Decode-only: the record's rows are the decoding sequences the policy was asked about, in order.
            # A step in which no row got a draft says nothing about supply: a draft fault (the engine fell back to
            # K = 0), or n-gram with no match anywhere, which costs what K = 0 costs anyway.
            for s, k, d in zip(seqs, asked, rec.num_draft, strict=True):
                if k > 0 and rec.total_draft:
                    self.global_supply.add(k, d)
                    own = self.supply.get(s)
                    if own is None:
                        own = self.supply[s] = Supply(self.k_max, SUPPLY_DECAY, prior=0.0)
                    own.add(k, d)
            self.cell_seconds[cell] = self.cell_seconds.get(cell, 0.0) + rec.seconds
            self.probe_loss[cell] = self.probe_loss.get(cell, 0.0) + rec.seconds * loss
            # A probe's switch to or from K = 0 makes a draft model's next draft pass also catch up on every token
            # it skipped: a switching cost (charged to the probe's loss), not the drafting arm's step time.
            switch = self._prev is not None and self._prev[0] == 0 and arm != 0 and (probe or self._prev[1])
            if switch:
                pass
            elif arm == MODEL_ARM:
                self.model_samples.setdefault(cell, deque(maxlen=8)).append(
                    (rec.seconds, self._draft_share(mask, asked), self.steps))
            else:
                self.times.add(cell, arm, self.steps, rec.seconds)
            self._prev = (arm, probe)
        if rec.batch_size or rec.num_prefill_tokens:
            self.cost.observe(rec.batch_size, rec.total_draft, max(rec.num_draft, default=0), rec.num_prefill_tokens,
                              rec.seconds)


def make_policy(kind: str, k_max: int, allowed_k: Seq[int] | None = None) -> SpecPolicy:
    policies = {"adaptive": AdaptivePolicy, "static": StaticPolicy}
    return policies[kind](k_max, allowed_k)
