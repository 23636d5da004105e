"""Speculation policy: how many draft tokens each decoding sequence gets this step.

Goal: the most delivered tokens per second, and never much less than the better of K = 0 and the best fixed K, at
any load, on any device. A fitted cost model alone cannot promise that (a linear fit of a CPU's step time is off
by more than the margin between the choices, and while one K runs, rows and draft tokens are collinear), so the
policy *measures*: it is a bandit over a few *arms* per batch-size cell (`engine.spec.goodput`):

- a uniform cap K for every adaptive row, for each allowed K (K = 0 and K_max included, so the fixed choices the
  policy is judged against are arms themselves);
- the cost model's per-sequence allocation (`MODEL_ARM`): with per-token acceptance a_i, sequence i gets

      k_i = min(K, largest j with a_i^j >= theta),   theta = (tokens/s at K=0) * (seconds per extra draft token)

  for the cap K whose allocation maximises sum_i E(a_i, k_i) / t(k), E(a, k) = (1 - a^(k+1)) / (1 - a), t from
  `StepCostModel`. The step is priced whole: opted-out rows at K = 0, seeded rows at their fixed K, and the prompt
  tokens prefilled beside them. It wins when acceptance differs between sequences enough that one cap fits none.

Each decode-only step adds its realized tokens per sequence-second to the arm it ran; the policy runs the arm with the
best goodput in the step's cell. Every `probe_every` steps of a cell it runs the arm measured longest ago there (every
`probe_every_new` steps while some arm has no fresh sample of its own there), so the ranking follows a change of
regime; samples older than `max_age` steps expire. The realized rate carries everything a model would have to
guess: n-gram drafts shorter than asked (or none), mixed batches, what a stop threw away. Steps with prefill are
not learned from (their time is mostly the prompt's); they run the cell's best arm.

Acceptance a_i is estimated per sequence from its verifies (accepted drafts are successes, a rejection is one failure:
the maximum-likelihood estimate of a geometric acceptance), recency-weighted and pulled toward the global rate, which
is the prior for new requests.

Seeded sampled requests (seed set, temperature > 0) always get K_max: the random draws a request consumes depend on the
K of each step, so a K that followed load would make the same seed give different text (the scheduler then caps it
at the sequence's fixed share of the token budget, never by what batch mates took). Greedy requests are
deterministic at any K and adapt freely. A static policy (`--speculative-policy static`) always grants K_max.
"""
from __future__ import annotations

from collections.abc import Sequence as Seq

from engine.sequence import Sequence
from engine.spec.cost_model import StepCostModel
from engine.spec.goodput import MODEL_ARM, GoodputTable, batch_cell
from engine.stats import StepRecord

ACCEPT_DECAY = 0.8  # per verify: weight of a sequence's older evidence
PRIOR_WEIGHT = 1.0  # pseudo-observations of the global rate in each sequence's estimate


def expected_tokens(a: float, k: int) -> float:
    """E[tokens emitted] verifying k drafts at per-token acceptance a (accepted prefix + 1 target token)."""
    if k <= 0:
        return 1.0
    if a >= 1.0:
        return k + 1.0
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def record_verify(seq: Sequence, num_draft: int, num_accepted: int) -> None:
    """Update a sequence's acceptance evidence after a verify of `num_draft` drafts."""
    seq.accept_successes = ACCEPT_DECAY * seq.accept_successes + num_accepted
    seq.accept_failures = ACCEPT_DECAY * seq.accept_failures + (1.0 if num_accepted < num_draft else 0.0)


def needs_fixed_k(seq: Sequence) -> bool:
    """Seeded sampled requests need a K sequence that does not depend on load, or their draws (and text) change."""
    return seq.needs_fixed_k


class StaticPolicy:
    """Always K_max (for requests that allow speculation)."""

    def __init__(self, k_max: int, allowed_k: Seq[int] | None = None):
        self.k = max(k for k in (allowed_k or range(k_max + 1)) if k <= k_max) if k_max else 0

    def choose_k(self, seqs: list[Sequence], budget: int, prefill_tokens: int = 0) -> list[int]:
        return [self.k if s.params.speculative else 0 for s in seqs]

    def observe(self, rec: StepRecord) -> None:
        pass


class AdaptivePolicy:
    def __init__(self, k_max: int, allowed_k: Seq[int] | None = None, *, prior_acceptance: float = 0.6,
                 probe_every: int = 16, probe_every_new: int = 4, probe_share: float = 0.015, model_arm: bool = True,
                 table: GoodputTable | None = None):
        self.ks = sorted(k for k in (allowed_k if allowed_k is not None else range(k_max + 1)) if k <= k_max)
        if 0 not in self.ks:
            self.ks.insert(0, 0)
        self.cost = StepCostModel()
        self.table = table or GoodputTable()
        self.global_successes = 4.0 * prior_acceptance  # decayed totals over all sequences' verifies
        self.global_failures = 4.0 * (1.0 - prior_acceptance)
        self.probe_every = probe_every
        self.probe_every_new = probe_every_new
        self.probe_share = probe_share
        self.cell_seconds: dict[int, float] = {}  # cell -> seconds of decode-only steps decided there
        self.probe_loss: dict[int, float] = {}  # cell -> seconds of goodput the probes there lost
        self.last_loss: dict[tuple[int, int], float] = {}  # (cell, arm) -> what its latest probe lost
        self._probe_best = 0.0  # best arm's goodput when the pending probe was chosen
        self.model_arm = model_arm and len(self.ks) > 1
        self.steps = 0  # steps observed: the clock samples are stamped with
        self.cell_steps: dict[int, int] = {}  # cell -> decode-only decisions taken there (the probe schedule)
        self.tried_at: dict[int, int] = {}  # arm -> step it last ran (round robin over arms not measured anywhere)
        self.last_arm: int | None = None  # the arm of the latest decision (tests and replays read it)
        self.last_probe = False  # whether the latest decision was a probe
        self._pending: tuple[int, int, bool] | None = None  # (cell, arm, probe?) the next observe() scores

    @property
    def global_acceptance(self) -> float:
        return self.global_successes / (self.global_successes + self.global_failures)

    def acceptance(self, seq: Sequence) -> float:
        s, f = seq.accept_successes, seq.accept_failures
        return (s + PRIOR_WEIGHT * self.global_acceptance) / (s + f + PRIOR_WEIGHT)

    @property
    def arms(self) -> list[int]:
        """Arms available now: every allowed uniform cap, and the model's allocation once the cost model is fitted."""
        return list(self.ks) + ([MODEL_ARM] if self.model_arm and self.cost.ready else [])

    # -- choosing ------------------------------------------------------------------------------------------------

    def choose_k(self, seqs: list[Sequence], budget: int, prefill_tokens: int = 0) -> list[int]:
        """K per decoding sequence. `prefill_tokens`: prompt tokens expected to run in the same step."""
        self._pending = None
        if len(self.ks) == 1 or not any(s.params.speculative and not needs_fixed_k(s) for s in seqs):
            return self.allocate(seqs, 0, prefill_tokens)
        cell = batch_cell(len(seqs))
        arm = self._pick_arm(cell, learn=prefill_tokens == 0)
        self.tried_at[arm] = self.steps
        self.last_arm = arm
        if prefill_tokens == 0:
            self._pending = (cell, arm, self.last_probe)
        return self.allocate(seqs, arm, prefill_tokens)

    def _pick_arm(self, cell: int, learn: bool) -> int:
        now = self.steps
        self.last_probe = False
        est = {a: self.table.estimate(cell, a, now) for a in self.arms}
        unknown = [a for a, e in est.items() if e is None]
        self._probe_best = 0.0
        if unknown:  # measured nowhere yet: try those, least recently tried first
            self.last_probe = True
            return min(unknown, key=lambda a: self.tried_at.get(a, -1))
        best = max(est, key=lambda a: est[a])
        if not learn:
            return best
        n = self.cell_steps[cell] = self.cell_steps.get(cell, 0) + 1
        missing = [a for a in est if self.table.local(cell, a, now) is None]
        if n % (self.probe_every_new if missing else self.probe_every):
            return best
        # Arms far behind the best cost the most to probe and are least likely to overtake: every 4th probe only.
        pool = missing or [a for a in est if a != best and (est[a] >= 0.8 * est[best] or n % (4 * self.probe_every) == 0)]
        # A probe is paid in lost time, not steps (at a compute-bound batch one K_max step costs several K = 0
        # steps): seconds * (1 - rate / best rate). Probes may lose at most `probe_share` of the cell's time.
        room = self.probe_share * self.cell_seconds.get(cell, 0.0) - self.probe_loss.get(cell, 0.0)
        pool = [a for a in pool if self._probe_loss(cell, a, est, best) <= room]
        if not pool:
            return best
        self.last_probe = True
        pick = min(pool, key=lambda a: self.table.last_step(cell, a))
        self._probe_best = est[best]
        return pick

    def _probe_loss(self, cell: int, arm: int, est: dict[int, float], best: int) -> float:
        """Seconds of goodput a step of `arm` is expected to lose against `best` in this cell: from its samples, or
        what its last probe really lost if more (after a K = 0 stretch a draft model first catches up on every
        token it skipped, which its older samples may not show)."""
        seconds = self.table.step_seconds(cell, arm, self.steps) or 0.0
        return max(seconds * max(0.0, 1.0 - est[arm] / max(est[best], 1e-12)), self.last_loss.get((cell, arm), 0.0))

    def allocate(self, seqs: list[Sequence], arm: int, prefill_tokens: int = 0) -> list[int]:
        """K per sequence under `arm`: opted-out rows 0, seeded sampled rows K_max, adaptive rows the arm's K."""
        k_max = self.ks[-1]
        adaptive = [s.params.speculative and not needs_fixed_k(s) for s in seqs]
        fixed = [0 if a or not s.params.speculative else k_max for s, a in zip(seqs, adaptive, strict=True)]
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
        accept = [self.acceptance(s) for s in seqs]
        # The rest of the step at any K: its rows, their drafts (capped by room left, as the scheduler does), the
        # tokens they are expected to emit, and the prefill.
        b = len(seqs) + len(others)
        other_k = [max(0, min(k, s.max_total_len - s.num_tokens - 1)) for s, k in others]
        fixed_draft, fixed_passes = sum(other_k), max(other_k, default=0)
        fixed_tokens = sum(expected_tokens(self.acceptance(s), k) for (s, _), k in zip(others, other_k, strict=True))

        def step_time(alloc: list[int]) -> float:
            return max(self.cost.predict(b, fixed_draft + sum(alloc), max(fixed_passes, *alloc), prefill_tokens), 1e-9)

        t0 = step_time([0] * len(seqs))
        per_draft = max(self.cost.predict(b, fixed_draft + 1, fixed_passes, prefill_tokens) - t0, 1e-9)
        theta = ((len(seqs) + fixed_tokens) / t0) * per_draft  # tokens a draft must add to pay for itself
        best_rate, best_alloc = -1.0, [0] * len(seqs)
        for k in self.ks:
            alloc = [self._own_k(a, k, theta) for a in accept]
            rate = (fixed_tokens + sum(expected_tokens(a, kk) for a, kk in zip(accept, alloc, strict=True))) \
                / step_time(alloc)
            if rate > best_rate:
                best_rate, best_alloc = rate, alloc
        return best_alloc

    def _own_k(self, a: float, cap: int, theta: float) -> int:
        """Largest allowed k <= cap whose last draft is still worth its cost (a^k >= theta)."""
        own = 0
        for k in self.ks:
            if 0 < k <= cap and a ** k >= theta:
                own = k
        return own

    # -- learning ------------------------------------------------------------------------------------------------

    def observe(self, rec: StepRecord) -> None:
        self.steps += 1
        verified = rec.num_accepted if rec.num_verified_accepted is None else rec.num_verified_accepted
        for d, acc in zip(rec.num_draft, verified, strict=True):
            if d:
                self.global_successes = 0.98 * self.global_successes + acc
                self.global_failures = 0.98 * self.global_failures + (1.0 if acc < d else 0.0)
        pending, self._pending = self._pending, None
        if pending and rec.batch_size and not rec.num_prefill_tokens and rec.seconds > 0:
            cell, arm, probe = pending
            self.cell_seconds[cell] = self.cell_seconds.get(cell, 0.0) + rec.seconds
            if probe and self._probe_best > 0:  # what this probe really lost against the best arm
                rate = rec.emitted_tokens / rec.batch_size / rec.seconds
                lost = rec.seconds * max(0.0, 1.0 - rate / self._probe_best)
                self.probe_loss[cell] = self.probe_loss.get(cell, 0.0) + lost
                self.last_loss[(cell, arm)] = lost
            self.table.add(cell, arm, self.steps, rec.emitted_tokens / rec.batch_size, rec.seconds)
        if rec.batch_size or rec.num_prefill_tokens:
            self.cost.observe(rec.batch_size, rec.total_draft, max(rec.num_draft, default=0), rec.num_prefill_tokens,
                              rec.seconds)


def make_policy(kind: str, k_max: int, allowed_k: Seq[int] | None = None):
    policies = {"adaptive": AdaptivePolicy, "static": StaticPolicy}
    return policies[kind](k_max, allowed_k)
