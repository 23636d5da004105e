"""Replay recorded engine steps into the adaptive policy: does it pick the better of K = 0 and K = 4?

tests/engine/spec_decode/data/demo_pair_steps.json holds StepRecords of the demo pair (engine/demo_pair, fp32, this 2-core
CPU) at K = 0 and K = 4 (static, draft model) at concurrency 1, 4 and 16, recorded by tools/record_steps.py. The
replay gives the policy a batch of c sequences; whatever K it asks for, the next recorded step of that K is what it
observes. Which K is better comes from the recordings themselves (decode-only tokens / seconds).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from engine.sampling.params import SamplingParams
from engine.sequence import Sequence
from engine.spec_decode.policy import AdaptivePolicy
from engine.stats import StepRecord

DATA = json.loads((Path(__file__).parent / "data" / "demo_pair_steps.json").read_text())
LEVELS = sorted(DATA["runs"], key=lambda s: int(s[2:]))


def decode_steps(level: str, k: int, time_scale: float = 1.0) -> list[StepRecord]:
    rows = [r for r in DATA["runs"][level][f"k={k}"] if not r[1]]
    return [StepRecord(b, 0, nd, na, emitted, sec * time_scale) for b, _, emitted, sec, nd, na in rows]


def rate(recs: list[StepRecord]) -> float:
    return sum(r.emitted_tokens for r in recs) / sum(r.seconds for r in recs)


def replay(level: str, recorded: dict[int, list[StepRecord]], steps: int = 400):
    c = int(level[2:])
    policy = AdaptivePolicy(4, allowed_k=(0, 4))
    batch = [Sequence(f"r{i}-0", f"r{i}", 0, [1, 2, 3], SamplingParams(temperature=0.0), 10_000, frozenset())
             for i in range(c)]
    feeds = {k: itertools.cycle(v) for k, v in recorded.items()}
    picked, tokens, seconds = [], 0, 0.0
    for i in range(steps):
        ks = policy.choose_k(batch, 10_000)
        k = 4 if sum(ks) >= 2 * len(ks) else 0  # the model arm may mix 0 and 4: the nearer recording
        rec = next(feeds[k])
        policy.observe(rec)
        picked.append(k)
        if i >= steps // 2:
            tokens, seconds = tokens + rec.emitted_tokens, seconds + rec.seconds
    return picked[steps // 2:], tokens / seconds


@pytest.mark.parametrize("level", LEVELS)
def test_replay_picks_the_better_recorded_k(level):
    recorded = {k: decode_steps(level, k) for k in (0, 4)}
    better = max(recorded, key=lambda k: rate(recorded[k]))
    picked, goodput = replay(level, recorded)
    assert picked.count(better) >= 0.9 * len(picked), (level, better, picked.count(better))
    assert goodput >= 0.97 * rate(recorded[better]), (level, goodput, {k: rate(v) for k, v in recorded.items()})


def test_replay_follows_a_device_where_verify_is_cheap():
    """The same c=1 recordings with the K = 4 steps' time scaled by 0.6 (a device whose verify is cheaper relative to
    decode): K = 4 now wins and the policy must switch to it."""
    level = LEVELS[0]
    recorded = {0: decode_steps(level, 0), 4: decode_steps(level, 4, time_scale=0.6)}
    assert rate(recorded[4]) > 1.1 * rate(recorded[0])
    picked, goodput = replay(level, recorded)
    assert picked.count(4) >= 0.9 * len(picked)
    assert goodput >= 0.97 * rate(recorded[4])


def test_replay_regime_change_k4_becomes_cheap_mid_run():
    """c=4: K = 0 wins on the recordings for 300 steps, then the K = 4 steps get 40 % cheaper (a co-tenant leaves
    the draft's core, say) and K = 4 wins. K = 0's own samples cannot show this; only the re-measures of K = 4, whose
    interval has grown while the ranking held, can. The policy must have switched within 300 steps."""
    level = "c=4"
    normal = {k: decode_steps(level, k) for k in (0, 4)}
    cheap = {0: normal[0], 4: decode_steps(level, 4, time_scale=0.6)}
    assert rate(normal[0]) > rate(normal[4]) and rate(cheap[4]) > 1.1 * rate(cheap[0])
    policy = AdaptivePolicy(4, allowed_k=(0, 4))
    batch = [Sequence(f"r{i}-0", f"r{i}", 0, [1, 2, 3], SamplingParams(temperature=0.0), 10_000, frozenset())
             for i in range(4)]
    feeds = {name: {k: itertools.cycle(v) for k, v in rec.items()} for name, rec in (("normal", normal),
                                                                                    ("cheap", cheap))}
    picked = []
    for i in range(700):
        ks = policy.choose_k(batch, 10_000)
        k = 4 if sum(ks) >= 2 * len(ks) else 0
        policy.observe(next(feeds["normal" if i < 300 else "cheap"][k]))
        picked.append(k)
    assert picked[200:300].count(0) >= 90, picked[200:300]
    assert picked[-100:].count(4) >= 90, picked[-100:]
