"""Which CPUs the engine-core process and the API process run on (`--engine-cpus`).

Why: on a CPU server the engine step is one long run of OpenMP work, and the API process (event loop, tokenization,
SSE writes) wakes for every token of every stream. Left to the kernel's scheduler, the API process and the engine
may share a core: a wake-up can preempt the engine's thread (or, with several OpenMP threads, stall the whole
parallel region at its next barrier). vLLM's CPU backend binds its OpenMP threads for this reason
(`VLLM_CPU_OMP_THREADS_BIND`). Measured on the 2-core dev machine (docs/BENCHMARKS.md section 6c), binding was not
faster when the machine was otherwise quiet, so the default is `none`; it is there for hosts where other work
competes for the cores.

Plan (`plan_cpus`): with `auto`, the engine gets the last `num_threads` of the CPUs this process may use and the API
process the rest, but only where the engine runs in its own process on a CPU device and at least one CPU is left
for the API; otherwise nothing is bound. An explicit list (`"1-3,5"`) gives the engine exactly those CPUs and the API
the others. `none` binds nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger("specserve.engine")


@dataclass(frozen=True)
class CpuPlan:
    engine: frozenset[int] | None  # CPUs of the engine-core process; None = leave it as it is
    api: frozenset[int] | None  # CPUs of the API process; None = leave it as it is

    @property
    def binds(self) -> bool:
        return self.engine is not None


NO_BINDING = CpuPlan(None, None)


def parse_cpu_list(text: str) -> frozenset[int]:
    """"0-2,5" -> {0, 1, 2, 5}. Raises ValueError on anything else (empty parts, reversed ranges, negatives)."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            raise ValueError(f"empty entry in CPU list {text!r}")
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad CPU list entry {part!r} in {text!r} (expected N or N-M)")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"reversed CPU range {part!r} in {text!r}")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def available_cpus() -> frozenset[int]:
    """The CPUs this process may run on (its affinity mask: a container's cpuset, taskset), or all of them."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return frozenset(range(os.cpu_count() or 1))


def plan_cpus(setting: str, *, num_threads: int, engine_process: bool, cpu_device: bool,
              available: frozenset[int]) -> CpuPlan:
    """The binding `--engine-cpus setting` asks for, given the machine. Raises ValueError for a list naming CPUs
    this process may not use."""
    if setting == "none" or not engine_process:
        return NO_BINDING
    if setting == "auto":
        if not cpu_device or num_threads >= len(available):
            return NO_BINDING  # a GPU/Neuron engine, or no CPU would be left for the API process
        ordered = sorted(available)
        engine = frozenset(ordered[-num_threads:])
        return CpuPlan(engine, available - engine)
    engine = parse_cpu_list(setting)
    if not engine <= available:
        raise ValueError(f"--engine-cpus {setting!r} names CPUs {sorted(engine - available)} outside this process's "
                         f"affinity {sorted(available)}")
    rest = available - engine
    return CpuPlan(engine, rest or None)


def bind_process(cpus: frozenset[int] | None) -> None:
    """Bind every thread of this process (the ones already running included: os.sched_setaffinity(0) binds only the
    calling thread on Linux) to `cpus`; threads started later inherit it from their creator."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that ended meanwhile
            pass


def describe(cpus: frozenset[int] | None) -> str:
    return "unbound" if cpus is None else "CPU " + ",".join(str(c) for c in sorted(cpus))
