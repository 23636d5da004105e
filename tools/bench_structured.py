"""JSON-schema workload: constrained vs unconstrained throughput, speculation on vs off, against a running server.

Usage (the server is the embedded default pair, started separately):
    flock /tmp/specserve-bench.lock .venv/bin/python tools/bench_structured.py --base-url http://127.0.0.1:8000 \
        --concurrency 1,16 --num-prompts 16 --output docs/results/structured.json

Prompts: the bundled `extract` set (answers drawn from a text in the prompt). Constrained requests carry a schema
(`SCHEMA`) and end when the document does; each unconstrained request then generates exactly as many tokens as the
constrained request on the same prompt did (per-request `max_tokens`, with length control), so the two runs do the
same work, stragglers included, and output tokens per second compare like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.datasets import load_dataset  # noqa: E402
from bench.loadgen import RequestSpec, run_load  # noqa: E402
from bench.stats import summarize  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": 1, "maxItems": 4},
        "count": {"type": "integer", "minimum": 0, "maximum": 20},
        "confidence": {"enum": ["low", "medium", "high"]},
    },
    "required": ["items", "count", "confidence"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "extraction", "schema": SCHEMA, "strict": True}}


def run(base_url: str, model: str, items, *, constrained: bool, speculative: bool, concurrency: int,
        num_prompts: int, max_tokens: int, lengths: list[int]) -> dict:
    """One configuration; appends each request's output length to `lengths` (send order)."""
    extra = {"speculative": speculative}
    if constrained:
        extra["response_format"] = FORMAT
    spec = RequestSpec(model=model, max_tokens=max_tokens, temperature=0.0, control_length=not constrained,
                       extra=extra)
    asyncio.run(run_load(base_url, items, spec, num_prompts=2, concurrency=2))  # warm-up
    results, seconds = asyncio.run(run_load(base_url, items, spec, num_prompts=num_prompts,
                                            concurrency=concurrency))
    m = summarize(results, seconds)
    forced = sum((r.speculation or {}).get("forced_tokens", 0) for r in results if r.ok)
    lengths.extend(r.output_tokens for r in results)
    return {"constrained": constrained, "speculative": speculative, "concurrency": concurrency,
            "output_throughput": m["output_throughput"], "output_tokens": m["output_tokens"],
            "mean_output_tokens": m["output_tokens"] / max(1, m["completed"]), "errors": m["errors"],
            "speculation": m["speculation"], "forced_tokens": forced, "duration_s": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="specserve-demo")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=160, help="cap for constrained documents")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    items = load_dataset("extract")
    rows = []
    for c in [int(x) for x in args.concurrency.split(",")]:
        n = max(args.num_prompts, 2 * c)  # two waves at least: one straggler does not set the duration
        lengths: list[int] = []
        con = run(args.base_url, args.model, items, constrained=True, speculative=True, concurrency=c,
                  num_prompts=n, max_tokens=args.max_tokens, lengths=lengths)
        # The same prompts, each asked for the length its constrained twin produced.
        matched = [{**items[i % len(items)], "max_tokens": max(1, lengths[i])} for i in range(n)]
        uncon = run(args.base_url, args.model, matched, constrained=False, speculative=True, concurrency=c,
                    num_prompts=n, max_tokens=args.max_tokens, lengths=[])
        rows += [con, uncon]
        if c == 1:
            rows.append(run(args.base_url, args.model, items, constrained=True, speculative=False, concurrency=c,
                            num_prompts=n, max_tokens=args.max_tokens, lengths=[]))
            rows.append(run(args.base_url, args.model, matched, constrained=False, speculative=False,
                            concurrency=c, num_prompts=n, max_tokens=args.max_tokens, lengths=[]))
        for r in rows[-4 if c == 1 else -2:]:
            print(json.dumps(r), flush=True)
    summary = {}
    for c in {r["concurrency"] for r in rows}:
        get = {(r["constrained"], r["speculative"]): r["output_throughput"] for r in rows if r["concurrency"] == c}
        summary[f"c{c}_constrained_over_unconstrained"] = get[(True, True)] / get[(False, True)]
        if (True, False) in get:
            summary[f"c{c}_speedup_constrained"] = get[(True, True)] / get[(True, False)]
            summary[f"c{c}_speedup_unconstrained"] = get[(False, True)] / get[(False, False)]
    print(json.dumps(summary))
    if args.output:
        Path(args.output).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
