"""Record an engine's StepRecords at fixed K and fixed concurrency, for replaying into the speculation policy.

    .venv/bin/python tools/record_steps.py --out tests/engine/spec_decode/data/demo_pair_steps.json

For each concurrency c and each K (0 = no speculation, K > 0 = draft model, static policy) the engine keeps c greedy
requests in flight (a finished one is replaced at once, as a closed-loop load generator would) and records every
step after a short warm-up, until `--steps` decode-only steps are in. The JSON holds, per "c=<c>" and "k=<K>", a list
of [batch_size, prefill_tokens, emitted_tokens, seconds, num_draft, num_accepted] rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.loader import load_settings  # noqa: E402
from engine.builder import build_engine  # noqa: E402
from engine.demo_pair import draft_dir, target_dir  # noqa: E402
from engine.sampling.params import SamplingParams  # noqa: E402
from engine.stats import StepRecord  # noqa: E402

PROMPTS = ["def fibonacci(n):", "class Stack:\n    def __init__(self):", "import os\n\ndef walk(path):",
           "def parse_args(argv):", "for i in range(10):", "def read_json(path):"]


def record(k: int, c: int, steps: int, warmup: int, dtype: str, max_tokens: int) -> list[list]:
    cli = {"model": str(target_dir()), "dtype": dtype, "device": "cpu", "max_num_seqs": max(c, 1),
           "speculative_method": "draft" if k else "none"}
    if k:
        cli.update(draft_model=str(draft_dir()), num_speculative_tokens=k, speculative_policy="static")
    eng, _ = build_engine(load_settings(cli, environ={}))
    recs: list[StepRecord] = []
    eng.counters.step_observers.append(recs.append)
    n = 0

    def add() -> None:
        nonlocal n
        ids = eng.tokenizer.encode(PROMPTS[n % len(PROMPTS)])
        eng.add_request(f"r{n}", ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
        n += 1

    for _ in range(c):
        add()
    kept: list[list] = []
    while sum(1 for r in kept if not r[1]) < steps:
        for o in eng.step():
            if o.finished:
                add()
        if len(recs) > warmup:
            r = recs[-1]
            kept.append([r.batch_size, r.num_prefill_tokens, r.emitted_tokens, round(r.seconds, 6), r.num_draft,
                         r.num_accepted])
    return kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--k", default="0,4")
    ap.add_argument("--steps", type=int, default=40, help="decode-only steps to keep per (c, K)")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    out = {"meta": {"pair": "engine/demo_pair", "dtype": args.dtype, "max_tokens": args.max_tokens,
                    "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "fields": ["batch_size", "prefill_tokens", "emitted_tokens", "seconds", "num_draft",
                               "num_accepted"]},
           "runs": {}}
    for c in (int(x) for x in args.concurrency.split(",")):
        for k in (int(x) for x in args.k.split(",")):
            rows = record(k, c, args.steps, args.warmup, args.dtype, args.max_tokens)
            dec = [r for r in rows if not r[1]]
            rate = sum(r[2] for r in dec) / sum(r[3] for r in dec)
            print(f"c={c} k={k}: {len(rows)} steps, decode-only {rate:.0f} tok/s", file=sys.stderr)
            out["runs"].setdefault(f"c={c}", {})[f"k={k}"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
