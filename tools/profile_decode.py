"""Issue 20: where a decode step's time goes, per token, on the real default model (SmolLM2-135M-Instruct).

Two measurements per batch size B:
  1. wall clock without the profiler: `engine.step()` and, inside it, `runner.execute()` (median of the timed steps);
  2. one profiled pass (torch.profiler) in which the model's regions carry `record_function` labels. Every op's
     *self* time goes to one bucket: weight matmuls (split layers / head), attention kernel, KV-cache write/read, RMSNorm,
     RoPE, embedding, other small ops by region, and the labels' own self time (Python between ops, plus profiler cost).
     The profiled shares are scaled to the unprofiled wall time of the step, so the breakdown adds up to the real step.

B requests with one chat prompt each run greedy to the end of the timed window, EOS ignored (K = 0, no speculation).

    flock /tmp/specserve-bench.lock .venv/bin/python tools/profile_decode.py --model /tmp/smollm2-hf --batch 1,16 \
        --threads 1 --out docs/bench/decode_profile.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

import engine.engine as engine_mod  # noqa: E402
import engine.models.llama as llama_mod  # noqa: E402
from bench.report import machine_info  # noqa: E402
from bench.synthetic import engine_for  # noqa: E402
from engine.sampling.params import SamplingParams  # noqa: E402

LABELS = ("step", "pack", "embed", "rope_tables", "norm", "attn", "rope", "mlp", "head", "sampling")


def _label(fn, name):
    def wrapped(*a, **k):
        with record_function(name):
            return fn(*a, **k)
    return wrapped


@contextmanager
def labelled(engine):
    """Wrap the model's regions and the engine's stages in record_function labels (profiled pass only)."""
    runner, model = engine.runner, engine.runner.model
    saved = []

    def patch(obj, attr, name):
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, _label(getattr(obj, attr), name))

    patch(engine, "step", "step")
    patch(runner, "_pack", "pack")
    patch(model.embed_tokens, "forward", "embed")
    patch(model.rotary, "forward", "rope_tables")
    for layer in model.layers:
        patch(layer.input_layernorm, "forward", "norm")
        patch(layer.post_attention_layernorm, "forward", "norm")
        patch(layer.self_attn, "forward", "attn")
        patch(layer.mlp, "forward", "mlp")
    patch(model.norm, "forward", "head")
    patch(model.lm_head, "forward", "head")
    patch(llama_mod, "apply_rope", "rope")
    patch(engine_mod, "select_tokens", "sampling")
    try:
        yield
    finally:
        for obj, attr, fn in reversed(saved):
            setattr(obj, attr, fn)


def bucket_of(evt, label: str | None) -> str:
    """The bucket an op's self time belongs to."""
    name = evt.name
    if name in LABELS:
        return f"python:{name}"  # a label's own self time: interpreter work between the ops of that region
    if name == "specserve_native::decoder_layers":
        return "native:decoder_layers"  # the whole layer stack in one op; its matmul share is timed separately
    if "linear" in name or name in ("aten::addmm", "aten::mm", "aten::matmul", "aten::bmm"):
        return "matmul:head" if label == "head" else "matmul:layers"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention_kernel"
    if name in ("aten::index_put_", "aten::index_put", "aten::_index_put_impl_") and label == "attn":
        return "kv_write"
    if name in ("aten::index_select",) and label == "attn":
        return "kv_read_copy"
    if "rms_norm" in name:
        return "norm"
    return f"ops:{label or 'engine'}"


def innermost_label(evt) -> str | None:
    p = evt.cpu_parent
    while p is not None:
        if p.name in LABELS and p.name != "step":
            return p.name
        p = p.cpu_parent
    return None


def submit(engine, b: int, prompt: list[int], n: int, tag: str) -> None:
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    for i in range(b):
        engine.add_request(f"{tag}-{i}", prompt, params)


def measure(engine, b: int, prompt: list[int], steps: int, prof_steps: int) -> dict:
    runner = engine.runner
    submit(engine, b, prompt, steps + prof_steps + 8, f"b{b}")
    while any(s.num_computed < len(s.prompt_ids) for s in engine.scheduler.running) or engine.num_waiting:
        engine.step()  # prefill
    for _ in range(3):
        engine.step()  # warm decode
    exec_times: list[float] = []
    orig_exec = runner.execute

    def timed_exec(batch):
        t = time.perf_counter()
        out = orig_exec(batch)
        exec_times.append(time.perf_counter() - t)
        return out

    runner.execute = timed_exec
    step_times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        step_times.append(time.perf_counter() - t)
    runner.execute = orig_exec
    assert all(len(s.prompt_ids) <= s.num_computed for s in engine.scheduler.running)

    with labelled(engine), profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(prof_steps):
            engine.step()
        prof_wall = (time.perf_counter() - t) / prof_steps
    while engine.has_work():
        engine.step()

    buckets: dict[str, float] = defaultdict(float)
    for evt in prof.events():
        if evt.device_type.name != "CPU":
            continue
        buckets[bucket_of(evt, innermost_label(evt))] += evt.self_cpu_time_total / 1e3 / prof_steps  # ms/step
    step_ms = median(step_times) * 1e3
    matmuls = native_matmul_ms(engine.runner, b)
    traced = sum(buckets.values())
    scale = step_ms / prof_wall / 1e3  # profiled ms -> unprofiled ms (the profiler inflates every op's cost)
    per_step = {k: round(v * scale, 3) for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])}
    return {
        "batch": b,
        "step_ms_median": round(step_ms, 3),
        "step_ms_min_max": [round(min(step_times) * 1e3, 3), round(max(step_times) * 1e3, 3)],
        "runner_execute_ms_median": round(median(exec_times) * 1e3, 3),
        "engine_outside_runner_ms": round(step_ms - median(exec_times) * 1e3, 3),
        "ms_per_token": round(step_ms / b, 3),
        "profiled_step_ms": round(prof_wall * 1e3, 3),
        "profiled_untraced_ms": round(prof_wall * 1e3 - traced, 3),
        "breakdown_ms_per_step_scaled": per_step,
        **({"native_layer_matmuls_alone_ms": matmuls} if matmuls is not None else {}),
    }


def native_matmul_ms(runner, b: int) -> float | None:
    """With the native decoder: the 4 x layers linear calls alone at this batch's row count, median of 20 (the weight
    streaming inside `native:decoder_layers`; the rest of that op is norms, RoPE, attention and adds)."""
    model = runner.model
    if getattr(model, "native", None) is None:
        return None
    lins = [m for layer in model.layers for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                                   layer.mlp.gate_up_proj, layer.mlp.down_proj)]
    xs = {m.in_features: torch.randn(b, m.in_features).bfloat16() for m in lins}
    times = []
    with torch.inference_mode():
        for _ in range(20):
            t = time.perf_counter()
            for m in lins:
                m(xs[m.in_features])
            times.append(time.perf_counter() - t)
    return round(median(times) * 1e3, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint dir; default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prof-steps", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--compile", default="off", help="torch_compile setting passed to the runner")
    ap.add_argument("--native-kernels", default="auto", help="auto | off (the eager step)")
    ap.add_argument("--out")
    args = ap.parse_args()
    batches = [int(x) for x in args.batch.split(",")]
    engine = engine_for(args.model, dtype=args.dtype, num_threads=args.threads, max_num_seqs=max(batches),
                        max_model_len=1024, native_kernels=args.native_kernels, **({"torch_compile": args.compile} if args.compile != "off" else {}))
    tok = engine.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Explain how a hash map works, with an example."}],
                                     add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt)
    results = [measure(engine, b, prompt, args.steps, args.prof_steps) for b in batches]
    out = {"model": args.model, "dtype": args.dtype, "threads": torch.get_num_threads(),
           "native": getattr(engine.runner.model, "native", None) is not None, "prompt_tokens": len(prompt),
           "runner": engine.runner.describe() if hasattr(engine.runner, "describe") else {},
           "machine": machine_info(), "results": results,
           "command": " ".join(["python", *sys.argv])}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
