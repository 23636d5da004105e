"""Issue 4: what the HTTP front end costs. Output tokens/s through a real `specserve serve` subprocess (streaming
/v1/completions via the bench load generator) vs the same engine configuration driven in-process, at concurrency 1 and
32, same prompts, same max_tokens (EOS ignored), greedy.

The two sides alternate (--rounds, order flipping each round) and the ratio is the median of per-round ratios; the
server idles while the in-process engine runs and vice versa. The client runs on the same 2 cores as the server, so
its cost (SSE parsing, httpx) is counted as HTTP cost. Goal: HTTP costs <= 5% (ratio >= 0.95).

    python tools/bench_server_overhead.py --out docs/bench/server_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.compare import Server, free_port  # noqa: E402
from bench.datasets import load_dataset  # noqa: E402
from bench.loadgen import RequestSpec, run_load  # noqa: E402
from bench.report import machine_info  # noqa: E402
from bench.synthetic import build_random_llama, drive_in_process, engine_for  # noqa: E402


def over_http(base_url: str, items: list[dict], n: int, conc: int, total: int) -> float:
    spec = RequestSpec(model="bench", max_tokens=n, temperature=0.0)
    results, duration = asyncio.run(run_load(base_url, items, spec, num_prompts=total, concurrency=conc))
    bad = [r.error for r in results if not r.ok]
    assert not bad, bad[:3]
    return sum(r.output_tokens for r in results) / duration


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model dir (default: the demo pair's target)")
    ap.add_argument("--synthetic", default=None, metavar="HIDDEN,LAYERS",
                    help="instead of --model, a random-init Llama of this size (vocab 32000), e.g. 1024,8")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--method", default="none", help="speculative method for both sides (none, ngram)")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=0, help="requests per run (default: max(8, 2 x concurrency))")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on both sides (0 = torch's choice)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    if args.synthetic:
        hidden, layers = (int(x) for x in args.synthetic.split(","))
        args.model = str(build_random_llama(Path(tmp.name) / "m", hidden=hidden, layers=layers))
    elif args.model is None:
        from engine.demo_pair import target_dir

        args.model = str(target_dir())
    levels = [int(x) for x in args.concurrency.split(",")]
    slots = max(levels)
    items = load_dataset("code")
    flags = dict(dtype=args.dtype, max_num_seqs=slots, **({"num_threads": args.threads} if args.threads else {}))
    engine = engine_for(args.model, method=args.method, **flags)
    fits = [(it, ids) for it in items
            if len(ids := engine.tokenizer.encode(it["prompt"])) + args.max_tokens <= engine.limits.max_model_len]
    items, prompts = [it for it, _ in fits], [ids for _, ids in fits]
    port = free_port()
    server = Server("specserve", [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port",
                                  str(port), "--model", args.model, "--served-model-name", "bench",
                                  "--speculative-method", args.method, "--dtype", args.dtype,
                                  "--max-num-seqs", str(slots),
                                  *(["--num-threads", str(args.threads)] if args.threads else [])], port=port).start()
    res: dict = {"machine": machine_info(), "args": vars(args), "levels": {}}
    try:
        n = args.max_tokens
        for conc in levels:  # warm-up both sides
            total = args.requests or max(8, 2 * conc)
            over_http(server.base_url, items, 4, conc, conc)
            drive_in_process(engine, prompts, 4, conc, conc, f"w{conc}")
        for rnd in range(args.rounds):
            for conc in levels:
                total = args.requests or max(8, 2 * conc)
                sides = ["http", "inproc"] if rnd % 2 == 0 else ["inproc", "http"]
                got = {}
                for side in sides:
                    got[side] = (over_http(server.base_url, items, n, conc, total) if side == "http"
                                 else drive_in_process(engine, prompts, n, conc, total, f"r{rnd}c{conc}"))
                lv = res["levels"].setdefault(str(conc), {"http": [], "inproc": [], "ratio": []})
                lv["http"].append(got["http"])
                lv["inproc"].append(got["inproc"])
                lv["ratio"].append(got["http"] / got["inproc"])
                print(f"round {rnd} c={conc}: HTTP {got['http']:.1f} tok/s, in-process {got['inproc']:.1f} tok/s, "
                      f"ratio {got['http'] / got['inproc']:.3f}", flush=True)
    finally:
        server.stop()
        tmp.cleanup()
    for conc, lv in res["levels"].items():
        lv["median_ratio"] = median(lv["ratio"])
        lv["http_cost_pct"] = 100 * (1 - lv["median_ratio"])
        print(f"c={conc}: HTTP/in-process median {lv['median_ratio']:.3f} -> HTTP costs {lv['http_cost_pct']:.1f}% "
              f"(goal <= 5%: {'met' if lv['http_cost_pct'] <= 5 else 'NOT met'})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
