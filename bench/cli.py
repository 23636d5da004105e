"""`specserve bench`: load generator against any OpenAI-compatible server, and `specserve bench compare`.

    specserve bench --base-url http://127.0.0.1:8000 --concurrency 1,4,16,64 --num-prompts 64 --output run.json
    specserve bench --base-url ... --request-rate 2,8 --num-prompts 100            # Poisson arrivals
    specserve bench compare --target DIR --draft-model DIR --concurrency 1,4,16    # starts each config itself

Writes FILE.json (schema `specserve-bench/1`), FILE.md (the table) and, with matplotlib (the `bench` extra),
FILE_{throughput,ttft,itl,acceptance,tokens_per_pass}.png next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench.datasets import load_dataset
from bench.loadgen import RequestSpec, error_text, make_client, run_load
from bench.report import document, markdown_table, plot_runs
from bench.stats import RequestResult, summarize


class BenchError(RuntimeError):
    """The benchmark cannot go on (server unreachable, every warm-up request refused); one line for the user."""


def _int_list(s: str) -> list[int]:
    """"1,4,16" -> [1, 4, 16]; anything else is an argparse error that says what is expected."""
    try:
        values = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive whole numbers such as 1,4,16, got {s!r}")
    return values


def _float_list(s: str) -> list[float]:
    """"0.5,2" -> [0.5, 2.0] (requests per second)."""
    try:
        values = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers such as 0.5,2,8, got {s!r}")
    return values


class DefaultsFormatter(argparse.HelpFormatter):
    """--help shows each flag's default, except where there is none (None, off switches) or the text names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if "default" in text or d is None or d is False or d == argparse.SUPPRESS or d == []:
            return text
        return text + " (default: %(default)s)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = DefaultsFormatter
    p.add_argument("mode", nargs="?", choices=["run", "compare"], default="run",
                   help="run: load a running server (default); compare: start each configuration and compare")
    g = p.add_argument_group("load")
    g.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root URL (run mode)")
    g.add_argument("--model", default=None, help="model name to send (default: the server's first /v1/models id)")
    g.add_argument("--api-key", default=None, help="bearer token, if the server wants one")
    # NOTE: string defaults go through `type` too, so --help shows "1,4,16", as the user would type it.
    g.add_argument("--concurrency", type=_int_list, default="1,4,16", metavar="N,N,...",
                   help="fixed concurrency levels, e.g. 1,4,16,64")
    g.add_argument("--request-rate", type=_float_list, default=None, metavar="R,R,...",
                   help="Poisson arrival rates in requests/s, e.g. 1,4 (replaces the concurrency sweep; "
                        "--concurrency's largest value caps requests in flight)")
    g.add_argument("--num-prompts", type=int, default=32, help="requests per run (dataset records cycle)")
    g.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per request")
    g.add_argument("--no-length-control", action="store_true",
                   help="do not send ignore_eos/min_tokens (outputs may end early at EOS)")
    g.add_argument("--dataset", default="instruct",
                   help="instruct, extract, chat, code, repetitive (bundled) or PATH.jsonl")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of every request")
    g.add_argument("--seed", type=int, default=None,
                   help="request i gets seed+i (default: unseeded, so the adaptive policy adapts sampled requests "
                        "too); also seeds Poisson arrivals (default 0)")
    g.add_argument("--warmup", type=int, default=2, help="requests sent (and ignored) before each configuration")
    g.add_argument("--logprobs", action="store_true",
                   help="ask for per-token logprobs to count tokens per chunk exactly (else spread usage by text)")
    g.add_argument("--output", default=None, help="FILE.json; also FILE.md and FILE_*.png")
    g.add_argument("--no-plots", action="store_true", help="write the JSON and Markdown only, no PNG plots")
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    c = p.add_argument_group("compare mode")
    c.add_argument("--target", default=None,
                   help="target model dir or .gguf (default: the embedded SmolLM2-135M-Instruct)")
    c.add_argument("--draft-model", default=None, help="draft model dir (default: the embedded default's draft)")
    c.add_argument("--configs", default="adaptive,k0,static-draft,static-ngram",
                   help="comma list from: adaptive, adaptive-ngram, adaptive-hybrid, k0, static-draft, static-ngram, "
                        "static-hybrid, hf-serve, llama-cpp")
    c.add_argument("--num-speculative-tokens", type=int, default=4, help="K for the fixed-K configs and the max K")
    c.add_argument("--dtype", default="auto", help="dtype for every configuration and for HF")
    c.add_argument("--serve-arg", action="append", default=[], help="extra flag for every specserve serve (repeat)")
    c.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads for every configuration and HF in-process (0 = torch's choice)")
    c.add_argument("--repeats", type=int, default=1, help="passes over all configs per level (order rotates)")
    c.add_argument("--hf-assisted", type=int, default=8, metavar="N",
                   help="also time HF assisted generation (in-process, batch 1) on N prompts; 0 = skip")
    c.add_argument("--hf-serve-pythonpath", default=None,
                   help="PYTHONPATH for `transformers serve` (it needs `accelerate`, e.g. pip install --target DIR)")


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)


async def sweep(base_url: str, items: list[dict[str, Any]], spec: RequestSpec, args: argparse.Namespace,
                config: str = "server", levels: list[tuple[int | None, float | None]] | None = None
                ) -> list[dict[str, Any]]:
    """Warm up, then one run per (concurrency, rate) level. Returns run records (config, level, metrics)."""
    levels = sweep_levels(args) if levels is None else levels
    runs = []
    if args.warmup:
        warm, _ = await run_load(base_url, items, spec, num_prompts=args.warmup, concurrency=min(args.warmup, 4))
        if warm and not any(r.ok for r in warm):  # a wrong --model or --api-key: say the server's reason once
            raise BenchError(f"{config}: every warm-up request failed: {warm[0].error}")
    for conc, rate in levels:
        bar = _progress(args.num_prompts, f"{config} {level_name(conc, rate)}", not args.no_progress)
        done = (lambda r, b=bar: b.update(1)) if bar else None
        client = make_client(conc or args.num_prompts)
        try:
            results, duration = await run_load(base_url, items, spec, num_prompts=args.num_prompts, concurrency=conc,
                                               request_rate=rate, seed=args.seed or 0, on_done=done, client=client)
        finally:
            await client.aclose()
            if bar:
                bar.close()
        runs.append(run_record(config, conc, rate, results, duration))
    return runs


def level_name(conc: int | None, rate: float | None) -> str:
    """"c=4" for a concurrency level; "rate=2/s" (with "c<=4" when capped) for Poisson arrivals."""
    if rate is None:
        return f"c={conc}"
    return f"rate={rate:g}/s" + (f" c<={conc}" if conc else "")


def sweep_levels(args: argparse.Namespace) -> list[tuple[int | None, float | None]]:
    if args.request_rate:
        cap = max(args.concurrency) if args.concurrency else None
        return [(cap, r) for r in args.request_rate]
    return [(c, None) for c in args.concurrency]


def run_record(config: str, conc: int | None, rate: float | None, results: list[RequestResult],
               duration: float) -> dict[str, Any]:
    m = summarize(results, duration)
    first_err = next((r.error for r in results if not r.ok), None)
    return {"config": config, "concurrency": conc, "request_rate": rate, "metrics": m, "first_error": first_err}


def list_models(base_url: str, api_key: str | None = None) -> list[str]:
    """The ids of GET /v1/models; `BenchError` (one line) when the server cannot be reached or refuses."""
    import httpx

    url = base_url.rstrip("/") + "/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url, headers=headers, timeout=30)
    except httpx.HTTPError as e:
        raise BenchError(f"cannot reach the server at {base_url} ({type(e).__name__}: {e}); is it running? "
                         "(start one with `specserve serve`, or pass --base-url)") from None
    if r.status_code != 200:
        raise BenchError(f"GET {url}: {error_text(r.status_code, r.text)}")
    try:
        return [m["id"] for m in r.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise BenchError(f"GET {url} did not return an OpenAI model list: {r.text[:200]!r}") from None


def first_model(base_url: str, api_key: str | None = None) -> str:
    models = list_models(base_url, api_key)
    if not models:
        raise BenchError(f"the server at {base_url} lists no models; pass --model")
    return models[0]


def request_spec(args: argparse.Namespace, model: str) -> RequestSpec:
    if args.seed is not None and args.temperature > 0:
        print("specserve bench: warning: --seed with --temperature > 0 seeds every request; the adaptive policy runs "
              "seeded sampled requests at a fixed K (K_max), so this measures static K, not adaptive", file=sys.stderr)
    return RequestSpec(model=model, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                       logprobs=args.logprobs, control_length=not args.no_length_control, api_key=args.api_key)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("mode", "base_url", "model", "concurrency", "request_rate", "num_prompts", "max_tokens", "dataset",
            "temperature", "seed", "warmup", "logprobs", "no_length_control")
    return {k: getattr(args, k, None) for k in keys}


def write_outputs(doc: dict[str, Any], args: argparse.Namespace, title: str = "") -> None:
    table = markdown_table(doc["runs"])
    print(table)
    for line in doc.get("summary_lines", []):
        print(line)
    for r in doc["runs"]:  # a table of errors says nothing about why: give each failing run's first error
        m = r["metrics"]
        if m["errors"]:
            print(f"{r.get('config', 'server')} {level_name(r.get('concurrency'), r.get('request_rate'))}: "
                  f"{m['errors']} of {m['num_requests']} requests failed; first: {r.get('first_error')}",
                  file=sys.stderr)
    if not args.output:
        return
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    stem = out.with_suffix("")
    md = table + "".join(f"\n{line}" for line in doc.get("summary_lines", []))
    stem.with_suffix(".md").write_text(md + "\n")
    if not args.no_plots:
        try:
            paths = plot_runs(doc["runs"], stem, title)
        except ImportError as e:  # matplotlib is the `bench` extra, not a base dependency
            paths = []
            print(f"plots skipped: {e.name or 'matplotlib'} is not installed (pip install 'specserve[bench]')",
                  file=sys.stderr)
        for p in paths:
            print(f"wrote {p}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        items = load_dataset(args.dataset)
    except ValueError as e:
        print(f"specserve bench: error: {e}", file=sys.stderr)
        return 2
    try:
        if args.mode == "compare":
            from bench.compare import run_compare

            return run_compare(args, items)
        served = list_models(args.base_url, args.api_key)  # fails fast, in one line, when nothing listens there
        model = args.model or (served[0] if served else None)
        if model is None:
            raise BenchError(f"the server at {args.base_url} lists no models; pass --model")
        runs = asyncio.run(sweep(args.base_url, items, request_spec(args, model), args))
    except BenchError as e:
        print(f"specserve bench: error: {e}", file=sys.stderr)
        return 1
    doc = document({**settings_of(args), "model": model}, runs)
    write_outputs(doc, args, title=model)
    return 0 if all(r["metrics"]["errors"] == 0 for r in runs) else 1
