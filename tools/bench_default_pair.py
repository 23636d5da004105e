"""Batch-1 speculation on the embedded default pair (SmolLM2-135M-Instruct + its draft), in-process, fair by construction.

    flock /tmp/specserve-bench.lock python tools/bench_default_pair.py --out docs/bench/default_pair_b1.json

What is measured, per dataset (bundled sets, chat template applied), every request generating exactly --max-tokens
(EOS ignored), bf16, --threads threads, all sides in one process and in the same rounds:

- specserve: K = 0 (`--speculative-method none`), static K (`--speculative-policy static`) and the default
  configuration (draft + adaptive K, K_max = K), at temperature 0 and --temperature (no seeds: seeded sampled
  requests bypass the adaptive policy, issue 14);
- Hugging Face `generate` on the same checkpoints: plain, and assisted with the draft (`num_assistant_tokens` = K,
  `num_assistant_tokens_schedule="constant"`, `assistant_confidence_threshold=0` so the draft always proposes K),
  temperature 0 only (its sampled assisted path is a different algorithm);
- prefill excluded on both sides: specserve decode time runs from the first generated token to the last; HF's is
  `generate(n)` minus `generate(1)` on the same prompt (both timed), over n - 1 tokens;
- --repeats rounds; in each round every prompt runs once on every side, the order of sides rotating per prompt;
  a side's tokens/s in a round = its decode tokens / its decode seconds over all prompts; ratios are taken per round,
  reported as median and min-max;
- the analytic bound E / (1 + K c) from the static run's per-token acceptance a (accepted / (accepted + rejections))
  and the cost ratio c (draft / target batch-1 decode step, runner.execute, alternating, median);
- greedy identity: the default configuration's tokens equal K = 0's on every prompt at temperature 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.datasets import load_dataset  # noqa: E402
from bench.report import machine_info  # noqa: E402
from bench.synthetic import engine_for  # noqa: E402
from engine.sampling.params import SamplingParams  # noqa: E402
from engine.spec_decode.acceptance import expected_tokens  # noqa: E402
from tools.bench_spec import RejectionTally, acceptance, counters_snapshot, step_cost  # noqa: E402


def cost_ratio(engine, rounds: int = 7) -> dict:
    """c = draft / target batch-1 decode step (runner.execute after a 32-token prefill), alternating, median."""
    proposer = engine.proposer
    proposer = getattr(proposer, "inner", proposer)  # unwrap a structured-output wrapper, if any
    target, draft = engine.runner, proposer.runner
    t, d = [], []
    for _ in range(rounds):
        t.append(step_cost(target))
        d.append(step_cost(draft))
    return {"target_step_s": median(t), "draft_step_s": median(d), "c": median(d) / median(t)}


def spread(xs: list[float]) -> dict:
    return {"median": median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def run_request(engine, prompt: list[int], n: int, temperature: float, tag: str) -> tuple[float, list[int]]:
    """(decode seconds from the first generated token to the last, generated ids)."""
    params = SamplingParams(max_tokens=n, temperature=temperature, ignore_eos=True)
    engine.add_request(tag, prompt, params)
    ids: list[int] = []
    t_first = None
    while engine.has_work():
        for o in engine.step():
            if o.token_ids and t_first is None:
                t_first = time.perf_counter()
            ids.extend(o.token_ids)
    t_end = time.perf_counter()
    assert len(ids) == n, (len(ids), n)
    return t_end - t_first, ids


class HFSide:
    """HF generate on the same checkpoints, in the same dtype; decode time = t(generate n) - t(generate 1)."""

    def __init__(self, target: Path, draft: Path, dtype: torch.dtype, k: int):
        from transformers import AutoModelForCausalLM

        from engine.models.hf_compat import dtype_kwarg

        self.m = AutoModelForCausalLM.from_pretrained(str(target), **dtype_kwarg(dtype)).eval()
        self.a = AutoModelForCausalLM.from_pretrained(str(draft), **dtype_kwarg(dtype)).eval()
        self.k = k

    def _gen(self, ids: torch.Tensor, n: int, assisted: bool) -> float:
        kw = {}
        if assisted:
            self.a.generation_config.num_assistant_tokens = self.k
            self.a.generation_config.num_assistant_tokens_schedule = "constant"
            self.a.generation_config.assistant_confidence_threshold = 0.0
            kw = {"assistant_model": self.a}
        t0 = time.perf_counter()
        with torch.inference_mode():
            g = self.m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=2, eos_token_id=None, **kw)
        dt = time.perf_counter() - t0
        assert g.shape[1] - ids.shape[1] == n, (g.shape, n)
        return dt

    def decode_seconds(self, prompt: list[int], n: int, assisted: bool) -> float:
        ids = torch.tensor([prompt])
        return max(1e-9, self._gen(ids, n, assisted) - self._gen(ids, 1, assisted))


def bench(args) -> dict:
    from engine.default_model import default_pair
    from engine.models.tokenizer import load_tokenizer

    target, draft = default_pair()
    if args.draft:
        from engine.default_model.draft import assemble_draft
        from engine.models.gguf import default_cache_dir

        draft = assemble_draft(Path(target), default_cache_dir(), Path(args.draft))  # a candidate draft's layers
    torch.set_num_threads(args.threads)
    common = dict(dtype="bfloat16", max_num_seqs=1, max_model_len=1024, num_speculative_tokens=args.k,
                  num_threads=args.threads)
    engines = {
        "k0": engine_for(target, method="none", **common),
        "static": engine_for(target, method="draft", draft=draft, speculative_policy="static", **common),
        "default": engine_for(target, method=args.default_method, draft=draft, **common),
    }
    also = [m for m in args.also.split(",") if m]  # more adaptive sides, named by their method
    for m in also:
        engines[m] = engine_for(target, method=m, draft=draft if m != "ngram" else None, **common)
    adaptive = ["default", *also]
    for e in engines.values():
        e.tally = RejectionTally(e)
    hf = HFSide(target, draft, torch.bfloat16, args.k) if args.hf else None
    tok = load_tokenizer(target)
    n = args.max_tokens
    out: dict = {"machine": machine_info(), "args": vars(args), "target": str(target), "draft": str(draft),
                 "cost": cost_ratio(engines["static"], rounds=7), "datasets": {}}
    c = out["cost"]["c"]
    print(f"c = {c:.3f} (target {out['cost']['target_step_s'] * 1e3:.1f} ms, draft "
          f"{out['cost']['draft_step_s'] * 1e3:.1f} ms per batch-1 step)", flush=True)
    for ds in args.datasets.split(","):
        recs = load_dataset(ds)[:args.num_prompts]
        prompts = [tok.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True) for r in recs]
        prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
        res: dict = {"prompts": len(prompts), "prompt_tokens": [len(p) for p in prompts]}
        for temp in (0.0, args.temperature):
            sides = ["k0", "static", *adaptive] if temp == 0 else ["k0", *adaptive]
            if temp == 0 and hf is not None:
                sides += ["hf", "hf_assisted"]
            for name in ("k0", "default"):  # warm-up (allocator, adaptive policy's first estimates)
                run_request(engines[name], prompts[0], n, temp, f"w-{ds}-{temp}-{name}")
            snaps = {s: counters_snapshot(engines[s]) for s in ("static", *adaptive)}
            rounds: dict[str, list[float]] = {s: [] for s in sides}
            identical: dict[str, list[bool]] = {s: [] for s in adaptive}
            for r in range(args.repeats):
                secs = {s: 0.0 for s in sides}
                for i, p in enumerate(prompts):
                    order = sides[(i + r) % len(sides):] + sides[:(i + r) % len(sides)]
                    got = {}
                    for s in order:
                        if s.startswith("hf"):
                            secs[s] += hf.decode_seconds(p, n, assisted=s == "hf_assisted")
                        else:
                            dt, got[s] = run_request(engines[s], p, n, temp, f"{ds}-{temp}-{r}-{i}-{s}")
                            secs[s] += dt
                    if temp == 0:
                        for s in adaptive:
                            identical[s].append(got[s] == got["k0"])
                for s in sides:
                    rounds[s].append(len(prompts) * (n - 1) / secs[s])
                print(f"  {ds} T={temp} round {r}: " + "  ".join(f"{s} {rounds[s][-1]:.1f}" for s in sides),
                      flush=True)
            t = {"decode_tok_s": {s: spread(v) for s, v in rounds.items()}}
            for s in adaptive:
                t[f"{s}/k0"] = spread([d / k for d, k in zip(rounds[s], rounds["k0"], strict=True)])
            for s in ("static", *adaptive):
                if s in sides:
                    after = counters_snapshot(engines[s])
                    t[s] = acceptance(snaps[s], after)
                    t[s]["tokens_per_step"] = (after["gen"] - snaps[s]["gen"]) / max(1, after["steps"] - snaps[s]["steps"])
            if temp == 0:
                t["static/k0"] = spread([a / b for a, b in zip(rounds["static"], rounds["k0"], strict=True)])
                a = t["static"]["per_token_a"]
                e = expected_tokens(a, args.k)
                bound = e / (1 + args.k * c)
                t["bound"] = {"a": a, "E": e, "K": args.k, "c": c, "bound": bound,
                              "static/k0 / bound": spread([x / bound for x in t["static/k0"]["runs"]]),
                              "default/k0 / bound": spread([x / bound for x in t["default/k0"]["runs"]])}
                for s in adaptive:
                    t[f"greedy_identical_{s}_vs_k0"] = f"{sum(identical[s])}/{len(identical[s])}"
                if hf is not None:
                    t["default/hf_assisted"] = spread([a / b for a, b in zip(rounds["default"], rounds["hf_assisted"],
                                                                               strict=True)])
                    t["default/hf"] = spread([a / b for a, b in zip(rounds["default"], rounds["hf"], strict=True)])
            res[f"T={temp}"] = t
            print(f"  {ds} T={temp}: " + ", ".join(f"{s}/k0 {t[f'{s}/k0']['median']:.2f} "
                                                   f"[{t[f'{s}/k0']['min']:.2f}, {t[f'{s}/k0']['max']:.2f}]"
                                                   for s in adaptive)
                  + (f", bound {t['bound']['bound']:.2f} (a {t['bound']['a']:.3f})" if temp == 0 else "")
                  + (f", default/HF assisted {t['default/hf_assisted']['median']:.2f}" if "default/hf_assisted" in t
                     else ""), flush=True)
        out["datasets"][ds] = res
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="chat,instruct")
    ap.add_argument("--num-prompts", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hf", type=int, default=1, help="1: also time HF generate, plain and assisted")
    ap.add_argument("--draft", default=None,
                    help="a draft directory (layers + config, like engine/default_model/draft) instead of the bundled one")
    ap.add_argument("--default-method", default="draft", help="the 'default' side's --speculative-method")
    ap.add_argument("--also", default="", help="comma list of more adaptive sides by method: hybrid, ngram")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t0 = time.monotonic()
    res = bench(args)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
