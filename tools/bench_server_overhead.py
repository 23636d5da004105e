"""Issues 4 and 16: what the HTTP front end costs. Output tokens/s through a real `specserve serve` subprocess (streaming
/v1/completions via the bench load generator; the engine in its own process unless SPECSERVE_ENGINE_PROCESS=false) vs
the same engine configuration driven in-process (LLMEngine.step in this process), at concurrency 1 and 32, same
prompts, same max_tokens (EOS ignored), greedy; and at concurrency 1 the time to first token on both sides (HTTP: send
-> first content chunk; in-process: add_request -> the step output holding the first token).

The two sides alternate (--rounds, order flipping each round) and the ratio is the median of per-round ratios; the
server idles while the in-process engine runs and vice versa. The client runs on the same 2 cores as the server, so
its cost (SSE parsing, httpx) is counted as HTTP cost. Goal: HTTP costs <= 5% (ratio >= 0.95).

    python tools/bench_server_overhead.py --out docs/bench/server_overhead.json
    python tools/bench_server_overhead.py --default-pair --method draft --out docs/bench/issue16_overhead_real.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


def over_http(base_url: str, items: list[dict], n: int, conc: int, total: int,
              ttfts: list[float] | None = None) -> float:
    spec = RequestSpec(model="bench", max_tokens=n, temperature=0.0)
    results, duration = asyncio.run(run_load(base_url, items, spec, num_prompts=total, concurrency=conc))
    bad = [r.error for r in results if not r.ok]
    assert not bad, bad[:3]
    if ttfts is not None:
        ttfts.extend(r.ttft for r in results if r.ttft is not None)
    return sum(r.output_tokens for r in results) / duration


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": median(xs), "min": min(xs), "max": max(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model dir (default: the demo pair's target)")
    ap.add_argument("--default-pair", action="store_true",
                    help="instead of --model, the embedded default (SmolLM2-135M-Instruct + its draft), as "
                    "`specserve serve` without --model")
    ap.add_argument("--synthetic", default=None, metavar="HIDDEN,LAYERS",
                    help="instead of --model, a random-init Llama of this size (vocab 32000), e.g. 1024,8")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--method", default="none", help="speculative method for both sides (none, ngram, draft)")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=0, help="requests per run (default: max(16, 2 x concurrency))")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on both sides (0 = torch's choice)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    if args.synthetic:
        hidden, layers = (int(x) for x in args.synthetic.split(","))
        args.model = str(build_random_llama(Path(tmp.name) / "m", hidden=hidden, layers=layers))
    elif args.model is None and not args.default_pair:
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
    model_flag = [] if args.default_pair else ["--model", args.model]
    server = Server("specserve", [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port",
                                  str(port), *model_flag, "--served-model-name", "bench",
                                  "--speculative-method", args.method, "--dtype", args.dtype,
                                  "--max-num-seqs", str(slots),
                                  *(["--num-threads", str(args.threads)] if args.threads else [])], port=port).start()
    res: dict = {"machine": machine_info(), "args": vars(args),
                 "engine_process": os.environ.get("SPECSERVE_ENGINE_PROCESS", "true"), "levels": {}}
    try:
        n = args.max_tokens
        for conc in levels:  # warm-up both sides
            over_http(server.base_url, items, 4, conc, conc)
            drive_in_process(engine, prompts, 4, conc, conc, f"w{conc}")
        for rnd in range(args.rounds):
            for conc in levels:
                total = args.requests or max(16, 2 * conc)
                sides = ["http", "inproc"] if rnd % 2 == 0 else ["inproc", "http"]
                got = {}
                ttft: dict[str, list[float]] = {"http": [], "inproc": []}
                keep = conc == 1  # TTFT at concurrency 1 only: above it, it measures queueing
                for side in sides:
                    got[side] = (over_http(server.base_url, items, n, conc, total, ttft["http"] if keep else None)
                                 if side == "http" else
                                 drive_in_process(engine, prompts, n, conc, total, f"r{rnd}c{conc}",
                                                  ttft["inproc"] if keep else None))
                lv = res["levels"].setdefault(str(conc), {"http": [], "inproc": [], "ratio": []})
                lv["http"].append(got["http"])
                lv["inproc"].append(got["inproc"])
                lv["ratio"].append(got["http"] / got["inproc"])
                line = (f"round {rnd} c={conc}: HTTP {got['http']:.1f} tok/s, in-process {got['inproc']:.1f} tok/s, "
                        f"ratio {got['http'] / got['inproc']:.3f}")
                if keep:  # per round: the median over its requests
                    t = {side: median(v) for side, v in ttft.items()}
                    for side in t:
                        lv.setdefault(f"ttft_{side}_s", []).append(t[side])
                    lv.setdefault("ttft_ratio", []).append(t["http"] / t["inproc"])
                    line += (f"; TTFT HTTP {1000 * t['http']:.2f} ms, in-process {1000 * t['inproc']:.2f} ms "
                             f"(ratio {t['http'] / t['inproc']:.3f})")
                print(line, flush=True)
    finally:
        server.stop()
        tmp.cleanup()
    for conc, lv in res["levels"].items():
        lv["median_ratio"] = median(lv["ratio"])
        lv["ratio_spread"] = spread(lv["ratio"])
        lv["http_cost_pct"] = 100 * (1 - lv["median_ratio"])
        # The goal holds only where every round clears it: a median above 0.95 whose rounds dip below is not shown.
        lv["goal_0.95"] = ("met" if min(lv["ratio"]) >= 0.95 else
                           "not met" if max(lv["ratio"]) < 0.95 else "not established")
        print(f"c={conc}: HTTP/in-process median {lv['median_ratio']:.3f} [{min(lv['ratio']):.3f}.."
              f"{max(lv['ratio']):.3f}] -> goal >= 0.95x: {lv['goal_0.95']}")
        if "ttft_ratio" in lv:
            lv["ttft_ratio_spread"] = spread(lv["ttft_ratio"])
            lv["median_ttft_http_s"] = median(lv["ttft_http_s"])
            lv["median_ttft_inproc_s"] = median(lv["ttft_inproc_s"])
            lv["goal_ttft_within_5pct"] = ("met" if max(lv["ttft_ratio"]) <= 1.05 else
                                           "not met" if min(lv["ttft_ratio"]) > 1.05 else "not established")
            print(f"c={conc}: TTFT HTTP {1000 * lv['median_ttft_http_s']:.2f} ms vs in-process "
                  f"{1000 * lv['median_ttft_inproc_s']:.2f} ms, ratio {median(lv['ttft_ratio']):.3f} "
                  f"[{min(lv['ttft_ratio']):.3f}..{max(lv['ttft_ratio']):.3f}] -> within 5 %: "
                  f"{lv['goal_ttft_within_5pct']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
