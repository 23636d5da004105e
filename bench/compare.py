"""`specserve bench compare`: start every configuration on the same model pair, load each in turn, report ratios.

All servers are started first (each on a free port, ready when /health answers 200), then for each concurrency level
the configurations run one after another in an order that rotates per level and repeat, so slow drifts of a shared
machine hit all of them alike; the ratios are taken within this one run. Idle servers only wake every 50 ms. Before
each level every server gets one unmeasured wave at that concurrency (the adaptive policy measures its step-cost cells
per batch-size bucket; the figures show its steady state, not its exploration).

Configurations (`--configs`):
  adaptive        specserve, draft proposer, adaptive K policy (the default on the Neuron backends)
  adaptive-ngram  specserve, n-gram proposer, adaptive K policy
  adaptive-hybrid specserve, hybrid proposer (n-gram lookup where the history matches, else the draft), adaptive K
                  (the default serving mode on torch: `--speculative-method auto` with a draft model)
  k0              specserve, --speculative-method none
  static-draft    specserve, draft proposer, --speculative-policy static (always K)
  static-ngram    specserve, n-gram proposer, --speculative-policy static
  hf-serve        `transformers serve --continuous-batching` on the target (needs `accelerate`, see --help)
  llama-cpp       llama.cpp `llama-server` on the target's weights as BF16 GGUF (bench/peer_llamacpp.py)
Plus, unless --hf-assisted 0: Hugging Face assisted generation in-process at batch 1
(`model.generate(assistant_model=draft)`) and plain `generate`, on the same prompts and the same dtype.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from statistics import median
from typing import Any

import httpx

from bench.cli import first_model, request_spec, settings_of, sweep, write_outputs
from bench.loadgen import run_load
from bench.report import document

REPO = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"specserve listening on (http://\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess; `base_url` once it logged its address (or the given port is open) and /health is 200."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None, port: int | None = None):
        self.name, self.cmd, self.port = name, cmd, port
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.lines: deque[str] = deque(maxlen=200)  # the log tail, for error messages
        self.base_url = f"http://127.0.0.1:{port}" if port else ""
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> Server:
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            if self.base_url:
                try:
                    if httpx.get(self.base_url + "/health", timeout=5).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                rc = self.proc.poll()
                self.stop()
                tail = "\n".join(list(self.lines)[-15:])
                raise RuntimeError(f"{self.name}: server did not become ready (rc={rc}):\n{tail}")
            time.sleep(0.2)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = _LISTENING.search(line)
            if m and not self.base_url:
                self.base_url = m.group(1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def resolve_pair(args: argparse.Namespace) -> tuple[str, str | None]:
    if args.target:
        return args.target, args.draft_model
    # No --target: the embedded default pair (SmolLM2-135M-Instruct + its draft), from the cache (built on first use).
    from engine.default_model import default_pair

    target, draft = default_pair(with_draft=not args.draft_model)
    return str(target), str(args.draft_model or draft)


ADAPTIVE_CONFIGS = ("adaptive", "adaptive-ngram", "adaptive-hybrid")  # each gets its ratios to every other config


def server_for(name: str, target: str, draft: str | None, args: argparse.Namespace) -> Server:
    k = str(args.num_speculative_tokens)
    port = free_port()
    base = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--model", target,
            "--max-num-seqs", str(max(args.concurrency)), "--dtype", args.dtype, *args.serve_arg,
            *(["--num-threads", str(args.threads)] if args.threads else [])]
    need_draft = name in ("adaptive", "static-draft", "adaptive-hybrid", "static-hybrid")
    if need_draft and not draft:
        raise ValueError(f"config {name!r} needs --draft-model")
    flags = {
        "adaptive": ["--speculative-method", "draft", "--draft-model", str(draft), "--num-speculative-tokens", k],
        "adaptive-ngram": ["--speculative-method", "ngram", "--num-speculative-tokens", k],
        "k0": ["--speculative-method", "none"],
        "static-draft": ["--speculative-method", "draft", "--draft-model", str(draft), "--speculative-policy",
                         "static", "--num-speculative-tokens", k],
        "static-ngram": ["--speculative-method", "ngram", "--speculative-policy", "static",
                         "--num-speculative-tokens", k],
        "adaptive-hybrid": ["--speculative-method", "hybrid", "--draft-model", str(draft), "--num-speculative-tokens",
                            k],
        "static-hybrid": ["--speculative-method", "hybrid", "--draft-model", str(draft), "--speculative-policy",
                          "static", "--num-speculative-tokens", k],
    }
    if name == "hf-serve":
        dtype = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16"}.get(args.dtype, args.dtype)
        cmd = [str(Path(sys.executable).with_name("transformers")), "serve", "--continuous-batching", "--device",
               "cpu", "--dtype", dtype, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", target]
        env = {"HF_HUB_OFFLINE": "1"}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        if args.hf_serve_pythonpath:
            env["PYTHONPATH"] = args.hf_serve_pythonpath
        return Server(name, cmd, env=env, port=port)
    if name == "llama-cpp":  # the CPU peer; skipped with one line when llama-server is missing
        from bench.peer_llamacpp import llamacpp_command

        return Server(name, llamacpp_command(target, port, args), port=port)
    if name not in flags:
        raise ValueError(f"unknown config {name!r}")
    return Server(name, base + flags[name], port=port)


def hf_dtype(args: argparse.Namespace):
    from engine.runners.torch_runner import resolve_dtype

    return resolve_dtype(args.dtype, "cpu")


def hf_assisted(target: str, draft: str | None, items: list[dict[str, Any]], args: argparse.Namespace
                ) -> dict[str, Any]:
    """Tokens/s of HF `generate` at batch 1 (greedy, exactly max_tokens new tokens), plain and with the draft as
    assistant model, in this process, on the first N prompts. Time includes prefill, as the HTTP runs do."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = hf_dtype(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(target)
    from engine.models.hf_compat import dtype_kwarg  # `dtype=` only from transformers 4.56

    model = AutoModelForCausalLM.from_pretrained(target, **dtype_kwarg(dtype)).eval()
    assistant = AutoModelForCausalLM.from_pretrained(draft, **dtype_kwarg(dtype)).eval() if draft else None
    prompts = []
    for it in items[:args.hf_assisted]:
        if "messages" in it:
            ids = tok.apply_chat_template(it["messages"], add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"]
        else:
            ids = tok(it["prompt"], return_tensors="pt")["input_ids"]
        prompts.append(ids)
    n = args.max_tokens
    out: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "prompts": len(prompts), "max_tokens": n}

    def timed(**kw) -> float:
        toks, t = 0, 0.0
        for ids in prompts:
            t0 = time.perf_counter()
            with torch.inference_mode():
                g = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, pad_token_id=tok.pad_token_id or 0, **kw)
            t += time.perf_counter() - t0
            toks += g.shape[1] - ids.shape[1]
        return toks / t

    timed()  # warm-up pass
    out["hf_generate_tok_s"] = timed()
    if assistant is not None:
        timed(assistant_model=assistant)
        out["hf_assisted_tok_s"] = timed(assistant_model=assistant)
    return out


def run_compare(args: argparse.Namespace, items: list[dict[str, Any]]) -> int:
    target, draft = resolve_pair(args)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    servers: list[Server] = []
    failed: dict[str, str] = {}
    try:
        for name in names:
            print(f"starting {name} ...", file=sys.stderr)
            try:
                servers.append(server_for(name, target, draft, args).start())
            except (RuntimeError, ValueError) as e:
                failed[name] = str(e)
                print(f"{name}: {e}", file=sys.stderr)
        runs = asyncio.run(_interleaved(servers, items, args))
        hf = hf_assisted(target, draft, items, args) if args.hf_assisted else None
    finally:
        for s in servers:
            s.stop()
    ratios = compare_ratios(runs, hf)
    winners = level_winners(runs)
    doc = document({**settings_of(args), "target": target, "draft": draft, "configs": names}, runs,
                   hf_inprocess=hf, ratios=ratios, failed_configs=failed, winners=winners,
                   summary_lines=winner_lines(winners) + [f"- {k}: {v:.3f}" for k, v in ratios.items() if v is not None])
    write_outputs(doc, args, title=f"{Path(target).name}: configurations")
    return 0 if not failed and all(r["metrics"]["errors"] == 0 for r in runs) else 1


async def _interleaved(servers: list[Server], items: list[dict[str, Any]], args: argparse.Namespace
                       ) -> list[dict[str, Any]]:
    specs = {s.name: request_spec(args, first_model(s.base_url, args.api_key)) for s in servers}
    for s in servers:
        if s.name == "hf-serve":  # transformers serve answers 422 to unknown fields; outputs may stop at EOS
            specs[s.name].control_length = False
        if s.name == "llama-cpp":  # no free prefills from llama.cpp's prompt cache (docs/PEERS.md)
            from bench.peer_llamacpp import REQUEST_EXTRA

            specs[s.name].extra = dict(REQUEST_EXTRA)
        await sweep(s.base_url, items, specs[s.name], args, s.name, levels=[])  # warm-up once per server
    runs = []
    rot = 0
    from bench.cli import sweep_levels

    for level in sweep_levels(args):
        conc = level[0] or 4
        for s in servers:  # one wave at this level's concurrency, so adaptive K is measured in steady state
            await run_load(s.base_url, items, specs[s.name], num_prompts=min(conc, args.num_prompts), concurrency=conc)
        for _ in range(args.repeats):
            order = servers[rot % len(servers):] + servers[:rot % len(servers)] if servers else []
            rot += 1
            for s in order:
                a = argparse.Namespace(**{**vars(args), "warmup": 0})
                runs += await sweep(s.base_url, items, specs[s.name], a, s.name, levels=[level])
    return runs


def compare_ratios(runs: list[dict[str, Any]], hf: dict[str, Any] | None) -> dict[str, float | None]:
    """Throughput ratios per level (median over repeats): adaptive vs each other config; adaptive vs the better of
    k0 and static-draft; and specserve at concurrency 1 vs HF in-process."""
    tput: dict[tuple[str, Any], list[float]] = {}
    for r in runs:
        key = (r["config"], (r["concurrency"], r["request_rate"]))
        tput.setdefault(key, []).append(r["metrics"]["output_throughput"] or 0.0)
    med = {k: median(v) for k, v in tput.items()}
    levels = sorted({lv for _, lv in med}, key=lambda x: (x[1] or 0, x[0] or 0))
    configs = sorted({c for c, _ in med})
    out: dict[str, float | None] = {}
    for lv in levels:
        tag = f"c={lv[0]}" + (f",rate={lv[1]:g}" if lv[1] else "")
        for ref in ADAPTIVE_CONFIGS:
            if (ref, lv) not in med:
                continue
            for other in configs:
                if other != ref and (other, lv) in med and med[(other, lv)] > 0:
                    out[f"{ref}/{other} @{tag}"] = med[(ref, lv)] / med[(other, lv)]
        fixed = [med[(c, lv)] for c in ("k0", "static-draft") if (c, lv) in med]
        if ("adaptive", lv) in med and fixed and max(fixed) > 0:
            out[f"adaptive/max(k0,static-draft) @{tag}"] = med[("adaptive", lv)] / max(fixed)
    if hf:
        c1 = {c: v for (c, lv), v in med.items() if lv == (1, None)}
        for c, v in c1.items():
            if hf.get("hf_assisted_tok_s"):
                out[f"{c}@c=1 (HTTP) / hf_assisted (in-process)"] = v / hf["hf_assisted_tok_s"]
            if hf.get("hf_generate_tok_s"):
                out[f"{c}@c=1 (HTTP) / hf_generate (in-process)"] = v / hf["hf_generate_tok_s"]
    return out


def level_winners(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level: the configuration with the best median output tokens/s, and each adaptive configuration's ratio
    to the best *other* configuration (median ratio, and its min..max over repeats paired by repeat index)."""
    tput: dict[tuple[Any, str], list[float]] = {}
    for r in runs:
        tput.setdefault(((r["concurrency"], r["request_rate"]), r["config"]), []).append(
            r["metrics"]["output_throughput"] or 0.0)
    out = []
    for lv in sorted({lv for lv, _ in tput}, key=lambda x: (x[1] or 0, x[0] or 0)):
        here = {c: v for (lv2, c), v in tput.items() if lv2 == lv}
        winner = max(here, key=lambda c: median(here[c]))
        row: dict[str, Any] = {"concurrency": lv[0], "request_rate": lv[1], "winner": winner,
                               "winner_tok_s": median(here[winner]), "adaptive": {}}
        for ad in ADAPTIVE_CONFIGS:
            others = {c: v for c, v in here.items() if c != ad and median(v) > 0}
            if ad not in here or not others:
                continue
            ref = max(others, key=lambda c: median(others[c]))
            paired = [a / b for a, b in zip(here[ad], others[ref], strict=False) if b > 0]
            row["adaptive"][ad] = {"against": ref, "ratio": median(here[ad]) / median(others[ref]),
                                   "min": min(paired, default=None), "max": max(paired, default=None),
                                   "repeats": len(paired)}
        out.append(row)
    return out


def winner_lines(winners: list[dict[str, Any]]) -> list[str]:
    lines = []
    for w in winners:
        tag = f"c={w['concurrency']}" + (f",rate={w['request_rate']:g}" if w["request_rate"] else "")
        parts = [f"- {tag}: winner {w['winner']} ({w['winner_tok_s']:.1f} tok/s)"]
        for ad, r in w["adaptive"].items():
            spread = f" [{r['min']:.3f}..{r['max']:.3f} over {r['repeats']} repeats]" if r["repeats"] > 1 else ""
            parts.append(f"{ad}/{r['against']} = {r['ratio']:.3f}{spread}")
        lines.append("; ".join(parts))
    return lines
