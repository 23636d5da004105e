"""What Gumbel-coupled drafting (engine/spec_decode/coupled.py) would cost seeded sampled requests on the real default pair.

    flock /tmp/specserve-bench.lock .venv/bin/python tools/measure_seeded_coupling.py \
        --out docs/bench/seeded_coupling.json

The default pair (SmolLM2-135M-Instruct + its 2-layer draft, bf16, 1 thread) is loaded the way `specserve serve`
loads it. For each of the first --prompts bundled `chat` prompts (chat template applied) and each sampling setting,
the target samples a continuation of up to --positions tokens at that setting (its own decode steps, the prompts
batched, stopping at EOS); at every position t the processed target distribution target_probs[t] (from that decode step) and the processed
draft distribution draft_probs[t] (one draft prefill over prompt + continuation, teacher-forced) both go through the
engine's logits pipeline (`process_logits` then `probs_from_processed`), so temperature and top-p are applied exactly
as the engine applies them. Per position:

- rejection sampling's acceptance  a_rs = sum_x min(target_probs, draft_probs);
- the coupling's acceptance        a_gc = P(argmax(log target_probs + g) == argmax(log draft_probs + g)), exact
  (`coupling_acceptance`), cross-checked by Monte Carlo over g on a few positions.

Reported per method: mean per-token acceptance; tokens per verify E(a, K) = (1 - a^(K+1)) / (1 - a) for K = 1, 2, 4
from the mean a, and "chained" (the mean over start positions t of sum_j prod_{i<j} a[t+i], which keeps the variation
along the text); the implied batch-1 speedup E / (1 + K c), c = the pair's measured draft/target step ratio from
--cost-json (the model card's figure). Both E figures treat consecutive acceptances as independent given the
continuation, for both methods alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.datasets import load_dataset  # noqa: E402
from bench.report import machine_info  # noqa: E402
from bench.synthetic import engine_for  # noqa: E402
from engine.runners.base import ForwardBatch  # noqa: E402
from engine.sampling.params import SamplingParams  # noqa: E402
from engine.sampling.pipeline import RowContext, process_logits  # noqa: E402
from engine.sampling.sampler import choice_generator, probs_from_processed, sample  # noqa: E402
from engine.spec_decode.acceptance import expected_tokens  # noqa: E402
from engine.spec_decode.coupled import coupling_acceptance, rejection_acceptance  # noqa: E402

SETTINGS = {"T=0.7": {"temperature": 0.7}, "T=1.0": {"temperature": 1.0},
            "T=0.7,top_p=0.9": {"temperature": 0.7, "top_p": 0.9}}
KS = (1, 2, 4)


def continuations(target, prompts: list[list[int]], params: SamplingParams, n: int, eos: set[int],
                  gens) -> list[tuple[list[int], torch.Tensor]]:
    """Per prompt (sampled tokens, processed target probs `[len, V]`): row t = the target's law of token t given the
    prefix. Prompt i lives in slot i; all unfinished prompts decode together, one batched target step per position
    (memory-bound: about the cost of one row), each sampling from its own generator."""
    slots = list(range(len(prompts)))
    logits = torch.cat([target.execute(ForwardBatch([i], [p], [0], [1]))
                        for i, p in enumerate(prompts)])  # (B, V)
    outs: list[list[int]] = [[] for _ in prompts]
    rows: list[list[torch.Tensor]] = [[] for _ in prompts]
    live = slots
    while live:
        ctxs = [RowContext(params, prompts[i], list(outs[i])) for i in live]
        processed = process_logits(logits, ctxs)  # (len(live), V)
        probs = probs_from_processed(processed)
        toks = sample(processed, ctxs, [gens[i] for i in live]).tolist()
        for r, (i, tok) in enumerate(zip(live, toks, strict=True)):
            rows[i].append(probs[r])
            outs[i].append(tok)
        live = [i for i in live if len(outs[i]) < n and outs[i][-1] not in eos]
        if live:
            logits = target.execute(ForwardBatch(live, [[outs[i][-1]] for i in live],
                                                 [len(prompts[i]) + len(outs[i]) - 1 for i in live], [1] * len(live)))
    return [(o, torch.stack(r)) for o, r in zip(outs, rows, strict=True)]


def draft_rows(draft, prompt: list[int], out: list[int], params: SamplingParams) -> torch.Tensor:
    """Processed draft probs `[len(out), V]`, teacher-forced: row t scores token t after prompt + out[:t]."""
    n = len(out)
    logits = draft.execute(ForwardBatch([0], [prompt + out[:-1]], [0], [n]))  # (n, V), slot 0 reused
    ctxs = [RowContext(params, prompt, out[:t]) for t in range(n)]
    return probs_from_processed(process_logits(logits, ctxs))


def chained(a: list[float], k: int) -> float:
    """Mean over start positions of sum_{j=0..k} prod_{i<j} a[t+i] (positions past the end are not used)."""
    vals = []
    for t in range(len(a) - k + 1):
        e, run = 1.0, 1.0
        for i in range(k):
            run *= a[t + i]
            e += run
        vals.append(e)
    return mean(vals)


def summarize(per_prompt: list[list[float]], c: float) -> dict:
    flat = [x for xs in per_prompt for x in xs]
    a = mean(flat)
    out: dict = {"mean_a": a, "positions": len(flat), "per_K": {}}
    for k in KS:
        ch = mean(chained(xs, k) for xs in per_prompt if len(xs) >= k)
        e = expected_tokens(a, k)
        out["per_K"][str(k)] = {"E_mean_a": e, "E_chained": ch, "speedup_b1_mean_a": e / (1 + k * c),
                                "speedup_b1_chained": ch / (1 + k * c)}
    best = max([("0", 1.0)] + [(k, v["speedup_b1_chained"]) for k, v in out["per_K"].items()], key=lambda kv: kv[1])
    out["best_K_b1_chained"] = {"K": int(best[0]), "speedup": best[1]}
    return out


def monte_carlo(target_probs: torch.Tensor, draft_probs: torch.Tensor, draws: int, gen) -> float:
    """Fraction of Gumbel draws on which both argmaxes agree, averaged over the rows given."""
    hits = 0
    for p, q in zip(target_probs, draft_probs, strict=True):
        g = -torch.empty(draws, p.shape[0]).exponential_(generator=gen).log()  # (draws, V)
        hits += int(((p.log() + g).argmax(-1) == (q.log() + g).argmax(-1)).sum())
    return hits / (draws * target_probs.shape[0])


def measure_setting(target, draft, prompts, knobs: dict, eos: set[int], c: float, args, mc_gen) -> dict:
    """Per-position acceptances of both methods for one sampling setting over `prompts`, summarized."""
    params = SamplingParams(max_tokens=args.positions, **knobs)
    rs_all, gc_all, mc_t, mc_d = [], [], [], []
    conts = continuations(target, prompts, params, args.positions, eos,
                          [choice_generator(args.seed, i) for i in range(len(prompts))])
    for i, (prompt, (cont, tp)) in enumerate(zip(prompts, conts, strict=True)):
        dp = draft_rows(draft, prompt, cont, params)  # (len(cont), V), like tp
        rs_all.append(rejection_acceptance(tp, dp).tolist())
        gc_all.append(coupling_acceptance(tp, dp).tolist())
        if i < args.mc_prompts:  # first and middle position of the continuation
            idx = sorted({0, len(cont) // 2})
            mc_t.append(tp[idx])
            mc_d.append(dp[idx])
    mc_t, mc_d = torch.cat(mc_t), torch.cat(mc_d)
    res = {"knobs": knobs, "positions_per_prompt": [len(x) for x in rs_all],
           "rejection": summarize(rs_all, c), "coupling": summarize(gc_all, c),
           "mc_check": {"rows": int(mc_t.shape[0]), "draws_per_row": args.mc_draws,
                        "exact_mean": float(coupling_acceptance(mc_t, mc_d).mean()),
                        "monte_carlo_mean": monte_carlo(mc_t, mc_d, args.mc_draws, mc_gen)}}
    res["coupling/rejection_mean_a"] = res["coupling"]["mean_a"] / res["rejection"]["mean_a"]
    pairs = [(g, r) for gs, rs in zip(gc_all, rs_all, strict=True) for g, r in zip(gs, rs, strict=True)]
    res["coupling_below_bound"] = sum(g < r / (2 - r) - 1e-9 for g, r in pairs)  # must be 0 (Daliri et al.)
    return res


def measure(args) -> dict:
    from engine.default_model import default_pair
    from engine.models.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    target_dir, draft_dir = default_pair()
    engine = engine_for(target_dir, method="draft", draft=draft_dir, speculative_policy="static", dtype="bfloat16",
                        max_num_seqs=args.prompts, max_model_len=1024, num_threads=args.threads)
    target = engine.runner
    draft = getattr(engine.proposer, "inner", engine.proposer).runner
    tok = load_tokenizer(target_dir)
    eos = set(engine.eos_token_ids)
    cost = json.loads(Path(args.cost_json).read_text())["cost"]
    c = cost["c"]
    out: dict = {"machine": machine_info(), "args": vars(args), "target": str(target_dir), "draft": str(draft_dir),
                 "cost": {"c": c, "source": args.cost_json, "target_step_s": cost.get("target_step_s"),
                          "draft_step_s": cost.get("draft_step_s")}, "datasets": {}}
    mc_gen = torch.Generator().manual_seed(1234)
    for ds in args.datasets.split(","):
        prompts = []
        for r in load_dataset(ds)[: args.prompts]:
            p = tok.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True)
            prompts.append(list(p["input_ids"] if hasattr(p, "keys") else p))
        settings = {}
        for name, knobs in SETTINGS.items():
            res = settings[name] = measure_setting(target, draft, prompts, knobs, eos, c, args, mc_gen)
            print(f"{ds} {name}: a_rs {res['rejection']['mean_a']:.3f}  a_gc {res['coupling']['mean_a']:.3f}  "
                  + "  ".join(f"K={k}: S_rs {res['rejection']['per_K'][str(k)]['speedup_b1_chained']:.3f} "
                              f"S_gc {res['coupling']['per_K'][str(k)]['speedup_b1_chained']:.3f}" for k in KS)
                  + f"  (mc {res['mc_check']['monte_carlo_mean']:.3f} vs exact {res['mc_check']['exact_mean']:.3f})"
                  + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
        out["datasets"][ds] = {"prompt_tokens": [len(p) for p in prompts], "settings": settings}
    out["wall_s"] = time.perf_counter() - t0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="chat,instruct",
                    help="bundled sets: chat (the brief's), instruct (the style the draft was trained on)")
    ap.add_argument("--prompts", type=int, default=16, help="first N prompts of each set")
    ap.add_argument("--positions", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mc-prompts", type=int, default=8, help="prompts whose 2 positions get the Monte-Carlo check")
    ap.add_argument("--mc-draws", type=int, default=256)
    ap.add_argument("--cost-json", default="docs/bench/default_pair_b1.json")
    ap.add_argument("--out", default="docs/bench/seeded_coupling.json")
    args = ap.parse_args()
    res = measure(args)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out} in {res['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
