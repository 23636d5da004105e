"""Compile and load `engine/native/*.cpp` as the `torch.ops.specserve_native` library.

Why not `torch.utils.cpp_extension.load`: it needs ninja and pybind11 headers; the kernels here register through
`TORCH_LIBRARY` and need only the C++ compiler and torch's own headers, so one `c++` call builds them (~10 s on
2 cores). The shared object is keyed by a hash of the sources, the torch version and the compile command, so a torch
upgrade or an edited kernel rebuilds and everything else loads the cached file in milliseconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import torch

from engine.models.gguf import default_cache_dir

log = logging.getLogger("specserve.native")

DIR_ENV = "SPECSERVE_NATIVE_DIR"  # where a prebuilt library lives (the CPU image builds it there), else the cache

SOURCES = ("linear_bf16.cpp", "decoder_layers.cpp")
_HERE = Path(__file__).resolve().parent
_state: dict[str, object] = {}  # "loaded": bool, "reason": str (why not), set once per process


def _compile_command(sources: list[Path], out: Path) -> list[str]:
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"
    abi = int(torch.compiled_with_cxx11_abi())
    # -fopenmp: at::parallel_for is a header template over `#pragma omp parallel` (torch's OpenMP backend); without
    # it the kernels run on one thread whatever torch.set_num_threads says. The library then needs libgomp.so.1, which
    # torch has already loaded (its bundled copy has that soname), so both share one OpenMP runtime and thread count.
    cmd = [cxx, "-O3", "-shared", "-fPIC", "-fopenmp", "-std=c++20", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w"]
    cmd += [f"-I{p}" for p in cpp_extension.include_paths()]
    cmd += [str(s) for s in sources]
    cmd += [f"-L{p}" for p in cpp_extension.library_paths()]
    cmd += ["-lc10", "-ltorch_cpu", "-o", str(out)]
    return cmd


def _library_path(cache_dir: Path) -> tuple[Path, list[str]]:
    sources = [_HERE / s for s in SOURCES]
    probe = _compile_command(sources, Path("OUT"))
    digest = hashlib.sha256()
    for s in sources:
        digest.update(s.read_bytes())
    digest.update(" ".join(probe[1:]).encode())  # not the compiler's path: an image ships the library without one
    digest.update(f"{torch.__version__}|{sysconfig.get_platform()}".encode())
    out = cache_dir / f"specserve_native-{digest.hexdigest()[:16]}.so"
    return out, _compile_command(sources, out)


def _build(out: Path, cmd: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".build.lock", "w") as lock:  # one build per cache dir, other processes wait for it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return
        log.info("building native CPU kernels into %s (once per torch version, ~10 s)", out.parent)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cmd = [*cmd[:-1], str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"compiler exited {proc.returncode}: {' | '.join(tail)}")
        os.replace(tmp, out)


def build_library(cache_dir: str | os.PathLike | None = None) -> Path:
    """The shared object for this torch and these sources, compiled into the directory if it is not there yet."""
    root = cache_dir or os.environ.get(DIR_ENV) or default_cache_dir() / "native"
    out, cmd = _library_path(Path(root))
    if not out.exists():
        _build(out, cmd)
    return out


def _registered() -> bool:
    """True when the ops are already registered in this process (another cache dir or a test loaded them)."""
    return hasattr(torch.ops.specserve_native, "supported")  # NOTE: torch.ops creates any namespace on access


def load(cache_dir: str | os.PathLike | None = None) -> bool:
    """Build (if needed) and load the native ops once per process. False, with one log line, where they cannot run:
    `SPECSERVE_NATIVE=0`, no compiler, a build error, or a CPU without AVX512-BF16."""
    if "loaded" in _state:
        return bool(_state["loaded"])
    try:
        if os.environ.get("SPECSERVE_NATIVE", "1") == "0":
            raise RuntimeError("SPECSERVE_NATIVE=0")
        if not _registered():
            torch.ops.load_library(str(build_library(cache_dir)))
        if not torch.ops.specserve_native.supported():
            raise RuntimeError("this CPU lacks AVX512-BF16")
        _state.update(loaded=True, reason="")
    except Exception as exc:  # any failure means the portable path, never a failed start
        _state.update(loaded=False, reason=str(exc))
        log.info("native CPU kernels unavailable (%s); using oneDNN/ATen kernels", exc)
    return bool(_state["loaded"])


def native_reason() -> str:
    """Why `load()` returned False ('' when it loaded or was not called)."""
    return str(_state.get("reason", ""))


if __name__ == "__main__":  # `python -m engine.native.build DIR`: prebuild (the CPU image does, with g++ installed)
    import sys

    logging.basicConfig(level=logging.INFO)
    print(build_library(sys.argv[1] if len(sys.argv) > 1 else None))
