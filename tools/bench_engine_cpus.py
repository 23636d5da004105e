"""`--engine-cpus auto` vs `none` over HTTP, side by side: two servers on the same model, requests alternating
between them per round (order flipping), streaming /v1/completions on the bundled `code` prompts, 32 tokens each
(EOS ignored), greedy. Prints and stores per-round tokens/s and median TTFT, and the auto/none ratios.

    python tools/bench_engine_cpus.py --rounds 6 --out docs/bench/engine_cpus_ab.json
    python tools/bench_engine_cpus.py --default-pair --rounds 4 --concurrency 1 --out docs/bench/engine_cpus_ab_real.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.compare import Server, free_port  # noqa: E402
from bench.datasets import load_dataset  # noqa: E402
from bench.loadgen import RequestSpec, run_load  # noqa: E402
from bench.report import machine_info  # noqa: E402

VARIANTS = ("auto", "none")


def run(base_url: str, items: list[dict], n: int, conc: int, total: int) -> tuple[float, float]:
    """(output tokens/s, median TTFT in seconds) of `total` requests at concurrency `conc`."""
    spec = RequestSpec(model="bench", max_tokens=n, temperature=0.0)
    results, duration = asyncio.run(run_load(base_url, items, spec, num_prompts=total, concurrency=conc))
    bad = [r.error for r in results if not r.ok]
    assert not bad, bad[:3]
    return sum(r.output_tokens for r in results) / duration, median(r.ttft for r in results if r.ttft is not None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model dir (default: the demo pair's target)")
    ap.add_argument("--default-pair", action="store_true", help="the embedded default pair instead of --model")
    ap.add_argument("--method", default="none")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.model is None and not args.default_pair:
        from engine.demo_pair import target_dir

        args.model = str(target_dir())
    levels = [int(x) for x in args.concurrency.split(",")]
    items = load_dataset("code")
    servers = {}
    for v in VARIANTS:
        port = free_port()
        model_flag = [] if args.default_pair else ["--model", args.model]
        servers[v] = Server(f"specserve[{v}]", [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1",
                                                "--port", str(port), *model_flag, "--served-model-name", "bench",
                                                "--speculative-method", args.method, "--num-threads", "1",
                                                "--max-num-seqs", str(max(levels)), "--engine-cpus", v],
                            port=port).start()
    res: dict = {"machine": machine_info(), "args": vars(args), "levels": {}}
    try:
        for conc in levels:  # warm-up
            for srv in servers.values():
                run(srv.base_url, items, 4, conc, conc)
        for rnd in range(args.rounds):
            for conc in levels:
                order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]
                got = {v: run(servers[v].base_url, items, args.max_tokens, conc, max(16, 2 * conc)) for v in order}
                lv = res["levels"].setdefault(str(conc), {"tok_s": {v: [] for v in VARIANTS},
                                                          "ttft_s": {v: [] for v in VARIANTS}, "ratio": [],
                                                          "ttft_ratio": []})
                for v in VARIANTS:
                    lv["tok_s"][v].append(got[v][0])
                    lv["ttft_s"][v].append(got[v][1])
                lv["ratio"].append(got["auto"][0] / got["none"][0])
                lv["ttft_ratio"].append(got["auto"][1] / got["none"][1])
                print(f"round {rnd} c={conc}: auto {got['auto'][0]:.1f} tok/s (TTFT {1000 * got['auto'][1]:.1f} ms), "
                      f"none {got['none'][0]:.1f} tok/s (TTFT {1000 * got['none'][1]:.1f} ms)", flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
    for conc, lv in res["levels"].items():
        r, t = lv["ratio"], lv["ttft_ratio"]
        lv["summary"] = {"ratio_median": median(r), "ratio_min": min(r), "ratio_max": max(r),
                         "ttft_ratio_median": median(t), "ttft_ratio_min": min(t), "ttft_ratio_max": max(t)}
        print(f"c={conc}: auto/none tokens/s median {median(r):.3f} [{min(r):.3f}..{max(r):.3f}], "
              f"TTFT auto/none median {median(t):.3f} [{min(t):.3f}..{max(t):.3f}]")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
