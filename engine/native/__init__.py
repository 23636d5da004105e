"""Hand-written CPU kernels (C++ over ATen), built once per machine and torch version, loaded as `torch.ops`.

`load()` compiles the sources with the system's C++ compiler against the installed torch's headers into the cache
(`$SPECSERVE_CACHE/native`, ~10 s the first time) and registers the ops; on any failure (no compiler, an old torch, a
CPU without the instructions) it returns False and logs one line, and callers keep their portable path.
"""

from engine.native.build import load, native_reason

__all__ = ["load", "native_reason"]
