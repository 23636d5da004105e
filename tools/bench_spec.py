"""Issue 3: what speculation buys, in-process, on two model pairs.

Pairs: `demo` = the bundled demo pair (engine/demo_pair) on held-out code prompts; `synthetic` = a random-init target
whose batch-1 decode is memory-bound, with a draft built to agree with it (bench/synthetic.py: target = the
draft's layers + extra layers whose residual contributions are scaled by --scale; random prompts).

Per pair, all greedy, EOS ignored, same dtype everywhere:
1. cost ratio c = draft decode step / target decode step (runner.execute at batch 1, alternating, median);
2. batch-1 tokens/s with K=0, static K (draft) and adaptive, runs alternating per prompt; measured per-token acceptance
   a = accepted / (accepted + rejections) (a rejection = a verify that accepted fewer than K), E = (1-a^(K+1))/(1-a),
   the analytic bound E / (1 + K c); goal: static-K speedup >= 90% of the bound;
3. HF assisted generation (`generate(assistant_model=draft)`) on the same pair at batch 1; goal: specserve >= 1.5x;
4. throughput at concurrency 1, 4, 16, 64 (in-process, refilled as requests finish) for adaptive, K=0 and static K;
   goal: adaptive >= 0.97x the better of the other two.

    python tools/bench_spec.py --pairs synthetic,demo --out docs/bench/spec.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.report import machine_info  # noqa: E402
from bench.synthetic import build_agreeing_pair, drive_in_process, engine_for  # noqa: E402
from engine.runners.base import ForwardBatch  # noqa: E402
from engine.sampling.params import SamplingParams  # noqa: E402
from engine.spec_decode.acceptance import expected_tokens  # noqa: E402

CONFIGS = ("k0", "static", "adaptive")


def build_engines(target: Path, draft: Path, args, max_len: int) -> dict:
    common = dict(dtype=args.dtype, max_num_seqs=max(args.concurrency, default=1), max_model_len=max_len,
                  max_num_batched_tokens=4096, num_speculative_tokens=args.k,
                  **({"num_threads": args.threads} if args.threads else {}))
    engines = {
        "k0": engine_for(target, method="none", **common),
        "static": engine_for(target, method="draft", draft=draft, speculative_policy="static", **common),
        "adaptive": engine_for(target, method="draft", draft=draft, speculative_policy="adaptive", **common),
    }
    for e in engines.values():
        e.tally = RejectionTally(e)
    return engines


def step_cost(runner, steps: int = 16) -> float:
    """Median seconds of one batch-1 decode step at position 32 (after a 32-token prefill in slot 0)."""
    runner.execute(ForwardBatch(slot_ids=[0], token_ids=[[5] * 32], start_pos=[0], num_logits=[1]))
    ts = []
    for i in range(steps):
        t0 = time.perf_counter()
        runner.execute(ForwardBatch(slot_ids=[0], token_ids=[[5]], start_pos=[32 + i], num_logits=[1]))
        ts.append(time.perf_counter() - t0)
    return median(ts)


def cost_ratio(engine, rounds: int = 5) -> dict:
    target, draft = engine.runner, engine.proposer.runner
    t, d = [], []
    for _ in range(rounds):
        t.append(step_cost(target))
        d.append(step_cost(draft))
    return {"target_step_s": median(t), "draft_step_s": median(d), "c": median(d) / median(t)}


class RejectionTally:
    """Wraps `engine.counters.record_step` to count verifies that rejected a draft (accepted < drafted)."""

    def __init__(self, engine):
        self.rejections = 0
        inner = engine.counters.record_step

        def record(rec):
            self.rejections += sum(1 for d, a in zip(rec.num_draft, rec.num_accepted, strict=True) if d and a < d)
            inner(rec)

        engine.counters.record_step = record


def counters_snapshot(engine) -> dict:
    c = engine.counters
    return {"draft": c.draft_tokens, "accepted": c.accepted_tokens, "gen": c.generation_tokens, "steps": c.steps,
            "rej": engine.tally.rejections}


def acceptance(before: dict, after: dict) -> dict:
    """Per-token acceptance a = accepted / (accepted + rejections): the MLE of a geometric acceptance model."""
    draft = after["draft"] - before["draft"]
    acc = after["accepted"] - before["accepted"]
    rej = after["rej"] - before["rej"]
    return {"draft_tokens": draft, "accepted_tokens": acc, "acceptance_rate": acc / draft if draft else None,
            "per_token_a": acc / (acc + rej) if acc + rej else None}


def run_one(engine, prompt: list[int], n: int, tag: str) -> float:
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    engine.add_request(tag, prompt, params)
    got = 0
    while engine.has_work():
        got += sum(len(o.token_ids) for o in engine.step())
    dt = time.perf_counter() - t0
    assert got == n, (got, n)
    return dt


def batch1(engines: dict, prompts: list[list[int]], args) -> dict:
    for name, e in engines.items():  # warm-up, also lets the adaptive policy explore its cells
        for i, p in enumerate(prompts[:2]):
            run_one(e, p, args.max_tokens, f"w{name}{i}")
    snaps = {name: counters_snapshot(e) for name, e in engines.items()}
    times = {name: 0.0 for name in engines}
    for i, p in enumerate(prompts):
        order = list(engines)[i % 3:] + list(engines)[:i % 3]
        for name in order:
            times[name] += run_one(engines[name], p, args.max_tokens, f"b{name}{i}")
    toks = len(prompts) * args.max_tokens
    out = {name: {"tok_s": toks / t} for name, t in times.items()}
    for name in ("static", "adaptive"):
        out[name].update(acceptance(snaps[name], counters_snapshot(engines[name])))
        after = counters_snapshot(engines[name])
        out[name]["tokens_per_step"] = (after["gen"] - snaps[name]["gen"]) / max(1, after["steps"] - snaps[name]["steps"])
    return out




def sweep(engines: dict, prompts: list[list[int]], args) -> dict:
    out: dict = {}
    for lvl, conc in enumerate(args.concurrency):
        total = max(conc, args.min_requests)
        names = list(engines)[lvl % 3:] + list(engines)[:lvl % 3]
        for name in names:
            # Warm-up wave at this concurrency: the adaptive policy measures its (batch bucket, K) cells here, so the
            # measured run shows its steady state (exploration of a cold bucket is not counted, for any config).
            drive_in_process(engines[name], prompts, args.sweep_tokens, conc, conc, f"w{name}{conc}")
            out.setdefault(name, {})[conc] = drive_in_process(engines[name], prompts, args.sweep_tokens, conc, total,
                                                   f"s{name}{conc}")
        best = max(out["k0"][conc], out["static"][conc])
        print(f"  c={conc:3d}  " + "  ".join(f"{n} {out[n][conc]:8.1f}" for n in CONFIGS)
              + f"  adaptive/best {out['adaptive'][conc] / best:.3f}", flush=True)
    return out


def hf_assisted(target: Path, draft: Path, prompts: list[list[int]], args) -> dict:
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else None
    if dtype is None:
        from engine.runners.torch_runner import resolve_dtype

        dtype = resolve_dtype("auto", "cpu")
    from engine.models.hf_compat import dtype_kwarg  # `dtype=` only from transformers 4.56

    m = AutoModelForCausalLM.from_pretrained(str(target), **dtype_kwarg(dtype)).eval()
    a = AutoModelForCausalLM.from_pretrained(str(draft), **dtype_kwarg(dtype)).eval()
    n = args.max_tokens

    def timed(**kw) -> float:
        t = 0.0
        for p in prompts:
            ids = torch.tensor([p])
            t0 = time.perf_counter()
            with torch.inference_mode():
                g = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=2, eos_token_id=None, **kw)
            t += time.perf_counter() - t0
            assert g.shape[1] - ids.shape[1] == n
        return len(prompts) * n / t

    timed(assistant_model=a)
    return {"hf_assisted_tok_s": timed(assistant_model=a), "hf_generate_tok_s": timed()}


def pair_prompts(kind: str, tokenizer, args) -> list[list[int]]:
    if kind == "demo":
        from bench.datasets import load_dataset

        return [tokenizer.encode(r["prompt"])[-args.prompt_len:] for r in load_dataset("code")[:args.num_prompts]]
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, len(tokenizer), (args.prompt_len,), generator=g).tolist()
            for _ in range(args.num_prompts)]


def bench_pair(kind: str, target: Path, draft: Path, args) -> dict:
    max_len = args.prompt_len + max(args.max_tokens, args.sweep_tokens) + args.k + 8
    engines = build_engines(target, draft, args, max_len)
    prompts = pair_prompts(kind, engines["k0"].tokenizer, args)
    res: dict = {"target": str(target), "draft": str(draft), "dtype": engines["k0"].runner.info().dtype}
    res["cost"] = cost_ratio(engines["static"])
    c = res["cost"]["c"]
    print(f"\n== {kind}: dtype {res['dtype']}, target step {res['cost']['target_step_s'] * 1e3:.1f} ms, "
          f"draft step {res['cost']['draft_step_s'] * 1e3:.1f} ms, c = {c:.3f}", flush=True)
    b1 = batch1(engines, prompts, args)
    res["batch1"] = b1
    a = b1["static"]["per_token_a"]
    e = expected_tokens(a, args.k) if a is not None else None
    bound = e / (1 + args.k * c) if e is not None else None
    speedup = b1["static"]["tok_s"] / b1["k0"]["tok_s"]
    res["bound"] = {"a": a, "E": e, "bound": bound, "speedup_static": speedup,
                    "speedup_adaptive": b1["adaptive"]["tok_s"] / b1["k0"]["tok_s"],
                    "speedup/bound": speedup / bound if bound else None}
    print("  batch 1 tok/s: " + "  ".join(f"{n} {b1[n]['tok_s']:.1f}" for n in CONFIGS))
    print(f"  a = {a:.3f}, E = {e:.2f} (measured tokens/step {b1['static']['tokens_per_step']:.2f}), "
          f"bound E/(1+Kc) = {bound:.2f}; static speedup {speedup:.2f} = {speedup / bound:.2f} of bound "
          f"(goal >= 0.90); adaptive speedup {res['bound']['speedup_adaptive']:.2f}", flush=True)
    if args.hf:
        hf = hf_assisted(target, draft, prompts[:args.hf_prompts], args)
        hf["specserve_static/hf_assisted"] = b1["static"]["tok_s"] / hf["hf_assisted_tok_s"]
        hf["specserve_adaptive/hf_assisted"] = b1["adaptive"]["tok_s"] / hf["hf_assisted_tok_s"]
        res["hf"] = hf
        print(f"  HF assisted {hf['hf_assisted_tok_s']:.1f} tok/s, HF generate {hf['hf_generate_tok_s']:.1f}; "
              f"specserve static/HF assisted {hf['specserve_static/hf_assisted']:.2f}x, adaptive/HF assisted "
              f"{hf['specserve_adaptive/hf_assisted']:.2f}x (goal >= 1.5)", flush=True)
    if args.concurrency:
        sw = sweep(engines, prompts, args)
        res["sweep_tok_s"] = sw
        res["adaptive/best"] = {conc: sw["adaptive"][conc] / max(sw["k0"][conc], sw["static"][conc])
                                for conc in args.concurrency}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="synthetic,demo")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--num-prompts", type=int, default=6)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 4, 16, 64])
    ap.add_argument("--sweep-tokens", type=int, default=24)
    ap.add_argument("--min-requests", type=int, default=16)
    ap.add_argument("--hf", type=int, default=1, help="1: also time HF assisted generation")
    ap.add_argument("--hf-prompts", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--draft-layers", type=int, default=1)
    ap.add_argument("--extra-layers", type=int, default=11)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--scale", type=float, default=0.05, help="residual scale of the target's extra layers")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's choice)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results: dict = {"machine": machine_info(), "args": vars(args), "pairs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.pairs.split(","):
            if kind == "demo":
                from engine.demo_pair import draft_dir, target_dir

                target, draft = target_dir(), draft_dir()
            else:
                target, draft = build_agreeing_pair(Path(tmp) / "pair", vocab=args.vocab, hidden=args.hidden,
                                                    draft_layers=args.draft_layers, extra_layers=args.extra_layers,
                                                    scale=args.scale)
            results["pairs"][kind] = bench_pair(kind, target, draft, args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
