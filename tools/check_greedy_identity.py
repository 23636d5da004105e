"""Greedy identity on the bundled prompt sets: speculation and batch mates never change a request's tokens.

    python tools/check_greedy_identity.py --pair default --out docs/bench/greedy_identity_default.json
    python tools/check_greedy_identity.py --pair toy --out docs/bench/greedy_identity_toy.json

The reference is each prompt run alone at K = 0 (concurrency 1). Every other configuration (K = 0, draft model and
n-gram, adaptive and static K) runs the same prompts at concurrency 1 and/or 16 (every prompt of a set in flight
with 15 others, admitted as slots free up), greedy, exactly --max-tokens tokens each (EOS ignored), in the default
dtype of the pair (bf16 on this CPU). A prompt counts as identical when its token ids equal the reference's; the
JSON lists the first differing prompt and position of each configuration.
This is a correctness check, not a benchmark: no timing is taken, so it needs no quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.datasets import BUNDLED, load_dataset  # noqa: E402
from bench.synthetic import engine_for  # noqa: E402
from engine.sampling.params import SamplingParams  # noqa: E402

CONFIGS = {  # name -> engine settings beyond the pair's model/draft
    "k0": dict(method="none"),
    "draft-adaptive": dict(method="draft"),
    "draft-static": dict(method="draft", speculative_policy="static"),
    "ngram-adaptive": dict(method="ngram"),
    "ngram-static": dict(method="ngram", speculative_policy="static"),
}


def pair_paths(name: str) -> tuple[Path, Path]:
    if name == "default":
        from engine.default_model import default_pair
        return default_pair()
    root = Path(__file__).resolve().parents[1] / "engine" / "demo_pair"
    return root / "target", root / "draft"


def encode_set(tok, name: str) -> list[list[int]]:
    out = []
    for rec in load_dataset(name):
        if "messages" in rec:
            ids = tok.apply_chat_template(rec["messages"], add_generation_prompt=True, tokenize=True)
            out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
        else:
            out.append(list(tok.encode(rec["prompt"])))
    return out


def generate(engine, prompts: list[list[int]], n: int, conc: int, tag: str) -> list[list[int]]:
    """Token ids per prompt, `conc` requests in flight (admitted in prompt order as others finish)."""
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    got: dict[str, list[int]] = {}
    sent = live = 0
    while sent < len(prompts) or live:
        while live < conc and sent < len(prompts):
            engine.add_request(f"{tag}-{sent}", prompts[sent], params)
            got[f"{tag}-{sent}"] = []
            sent, live = sent + 1, live + 1
        for o in engine.step():
            got[o.request_id].extend(o.token_ids)
            live -= o.finished
    ids = [got[f"{tag}-{i}"] for i in range(len(prompts))]
    assert all(len(x) == n for x in ids), [len(x) for x in ids]
    return ids


def first_difference(ref: list[list[int]], got: list[list[int]]) -> dict | None:
    for i, (a, b) in enumerate(zip(ref, got, strict=True)):
        if a != b:
            pos = next(j for j, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
            return {"prompt": i, "position": pos}
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", choices=("default", "toy"), default="default")
    ap.add_argument("--datasets", default=",".join(BUNDLED))
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--runs", default="k0@16,draft-adaptive@1,draft-adaptive@16,draft-static@16,ngram-adaptive@16,"
                                      "ngram-static@16", help="config@concurrency list, against k0@1")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from engine.models.tokenizer import load_tokenizer

    target, draft = pair_paths(args.pair)
    tok = load_tokenizer(target)
    sets = {name: encode_set(tok, name) for name in args.datasets.split(",")}
    common = dict(max_num_seqs=16, max_model_len=1024, num_speculative_tokens=args.k)
    result: dict = {"pair": args.pair, "target": str(target), "draft": str(draft), "args": vars(args),
                    "prompts": {k: len(v) for k, v in sets.items()}, "runs": {}}
    engines: dict[str, object] = {}

    def engine(cfg: str):
        if cfg not in engines:
            kw = dict(CONFIGS[cfg])
            method = kw.pop("method")
            engines[cfg] = engine_for(target, method=method, draft=draft if method == "draft" else None,
                                      **common, **kw)
        return engines[cfg]

    t0 = time.time()
    refs = {name: generate(engine("k0"), p, args.max_tokens, 1, f"ref-{name}") for name, p in sets.items()}
    result["reference_dtype"] = engine("k0").runner.info().dtype
    print(f"reference (k0 alone) done in {time.time() - t0:.0f} s, dtype {result['reference_dtype']}", flush=True)
    for run in args.runs.split(","):
        cfg, conc = run.split("@")
        per_set = {}
        for name, prompts in sets.items():
            got = generate(engine(cfg), prompts, args.max_tokens, int(conc), f"{run}-{name}")
            same = sum(a == b for a, b in zip(refs[name], got, strict=True))
            per_set[name] = {"identical": same, "of": len(prompts), "first_difference": first_difference(refs[name], got)}
        total = sum(v["identical"] for v in per_set.values()), sum(v["of"] for v in per_set.values())
        result["runs"][run] = {"sets": per_set, "identical": total[0], "of": total[1]}
        print(f"{run}: {total[0]}/{total[1]} identical to k0 alone "
              + " ".join(f"{k} {v['identical']}/{v['of']}" for k, v in per_set.items()), flush=True)
    result["all_identical"] = all(r["identical"] == r["of"] for r in result["runs"].values())
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("ALL IDENTICAL" if result["all_identical"] else "DIFFERENCES FOUND")


if __name__ == "__main__":
    main()
