"""The engine-core process: owns the LLMEngine (scheduler, proposers, runners) and steps it, one message per step.

Started by `engine.process_engine.ProcessEngine` with multiprocessing's "spawn" method (a fresh interpreter: no torch
or OpenMP threads forked from the API process). The loop:

    inbox (adds/aborts) -> engine.step() -> one StepBatch (all output deltas + counters + gauges) -> outbox

It ignores SIGINT/SIGTERM (the API process drains first, then sends Shutdown) and exits when its parent is gone, so a
killed server leaves no orphan holding the model's memory.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback

import zmq

from engine import errors as engine_errors
from engine.cpu_affinity import CpuPlan, available_cpus, bind_process, plan_cpus
from engine.cpu_affinity import describe as describe_cpus
from engine.ipc import (
    Codec,
    Fatal,
    Inbox,
    LoadFailed,
    Ready,
    Rejected,
    Shutdown,
    StepBatch,
    snapshot_counters,
    unpack_params,
)

log = logging.getLogger("specserve.engine.core")

IDLE_POLL_MS = 200  # with no work, wake this often to notice a dead parent


def run_core(settings, inbox_addr: str, outbox_addr: str, log_level: str = "info") -> None:
    """Process entry point (must be importable for "spawn"). Builds the engine as AsyncEngine.from_settings does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[core]: %(message)s")
    parent = os.getppid()
    ctx = zmq.Context(io_threads=1)
    inbox = ctx.socket(zmq.PULL)
    inbox.setsockopt(zmq.LINGER, 0)
    inbox.connect(inbox_addr)
    outbox = ctx.socket(zmq.PUSH)
    outbox.setsockopt(zmq.LINGER, 2000)  # let the last message (Fatal, final outputs) leave before exit
    outbox.connect(outbox_addr)
    codec = Codec()
    try:
        try:
            plan = _bind_cpus(settings)
            engine, name, tokenizer_path = _build(settings)
        except BaseException as e:
            log.exception("engine build failed")
            outbox.send(codec.encode(LoadFailed(error=f"{type(e).__name__}: {e}")))
            return
        lim = engine.limits
        outbox.send(codec.encode(Ready(
            model_name=name, tokenizer_path=tokenizer_path, vocab_size=engine.vocab_size,
            max_model_len=lim.max_model_len, max_num_seqs=lim.max_num_seqs, max_queue=lim.max_queue,
            max_num_batched_tokens=lim.max_num_batched_tokens, eos_token_ids=sorted(engine.eos_token_ids),
            pid=os.getpid(), api_cpus=sorted(plan.api) if plan.api is not None else None)))
        try:
            CoreLoop(engine, inbox, outbox, codec, parent).run()
        except BaseException as e:  # a bug in the loop: say so, then die; the API side fails in-flight work
            log.exception("engine core loop failed")
            outbox.send(codec.encode(Fatal(error=f"{type(e).__name__}: {e}")))
            raise SystemExit(1) from None
    finally:
        inbox.close()
        outbox.close()
        ctx.term()


def _bind_cpus(settings) -> CpuPlan:
    """Bind this process as `--engine-cpus` asks (before the model loads, so torch's OpenMP threads start there);
    the returned plan's API CPUs travel to the API process in `Ready`."""
    from engine.runners.registry import resolve_backend
    from engine.runners.torch_runner import resolve_device

    cpu = resolve_backend(settings.engine.backend).name == "torch" and resolve_device(settings.model.device).type == "cpu"
    plan = plan_cpus(settings.engine.engine_cpus, num_threads=settings.engine.num_threads or 1,
                     engine_process=True, cpu_device=cpu, available=available_cpus())
    bind_process(plan.engine)
    if plan.binds:
        log.info("engine core bound to %s, API process to %s (--engine-cpus %s)", describe_cpus(plan.engine),
                 describe_cpus(plan.api), settings.engine.engine_cpus)
    return plan


def _build(settings):
    """(LLMEngine, served name, tokenizer source) exactly as AsyncEngine.from_settings builds it."""
    from engine.builder import build_engine, resolve_models
    from engine.models.loader import resolve_model_path

    engine, name = build_engine(settings)
    tokenizer_path = settings.model.tokenizer
    if tokenizer_path is None:  # the target's directory, resolved (cached) by build_engine a moment ago
        target_id = resolve_models(settings)[0]
        tokenizer_path = str(resolve_model_path(target_id, cache_dir=settings.model.download_dir))
    return engine, name, tokenizer_path


class CoreLoop:
    """Drain the inbox, step, send one StepBatch per step. Single-threaded: the engine is touched only here."""

    def __init__(self, engine, inbox, outbox, codec: Codec, parent_pid: int):
        self.engine = engine
        self.inbox = inbox
        self.outbox = outbox
        self.codec = codec
        self.parent_pid = parent_pid
        self.poller = zmq.Poller()
        self.poller.register(inbox, zmq.POLLIN)
        self._records: list = []
        self._rejected: list[Rejected] = []
        self._stop = False
        engine.counters.step_observers.append(self._records.append)

    def run(self) -> None:
        while not self._stop:
            busy = self.engine.has_work()
            if not busy and not self._rejected:
                if not self.poller.poll(IDLE_POLL_MS):
                    if os.getppid() != self.parent_pid:
                        log.warning("API process is gone; engine core exits")
                        return
                    continue
            self._read_inbox()
            if self._stop:
                return
            outputs = self.engine.step() if self.engine.has_work() else []
            self._send(outputs)

    def _read_inbox(self) -> None:
        """Every message waiting now (never blocks): adds and aborts of several API ticks land in one step."""
        while True:
            try:
                data = self.inbox.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            msg = self.codec.decode_to_core(data.buffer)
            if isinstance(msg, Shutdown):
                self._stop = True
                return
            assert isinstance(msg, Inbox)
            for add in msg.adds:
                self._add(add)
            for rid in msg.aborts:
                self.engine.abort(rid)

    def _add(self, add) -> None:
        params = unpack_params(add.params)
        try:
            # The API process made every other check and booked the capacity; the backend's limits are the core's.
            self.engine.admission.check_backend(add.prompt_ids, params)
            self.engine.enqueue(add.request_id, add.prompt_ids, params, arrival_time=add.arrival_time)
        except engine_errors.EngineError as e:  # a check only the core can make (runner buckets)
            self._rejected.append(Rejected(add.request_id, params.n, type(e).__name__, e.message, e.field))
        except Exception as e:  # anything else is a bug: fail this request alone
            log.error("could not add request %s:\n%s", add.request_id, traceback.format_exc())
            self._rejected.append(Rejected(add.request_id, params.n, "RequestFailedError",
                                           f"{type(e).__name__}: {e}"))

    def _send(self, outputs) -> None:
        e = self.engine
        records, self._records[:] = list(self._records), []
        rejected, self._rejected = self._rejected, []
        batch = StepBatch(outputs=outputs, records=records,
                          counters=snapshot_counters(e.counters, e.structured.stats),
                          num_running=e.num_running, num_waiting=e.num_waiting, num_free_slots=e.num_free_slots,
                          rejected=rejected)
        data = self.codec.encode(batch)
        while True:
            try:
                self.outbox.send(data, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:  # the API side is not reading: slow, or gone (then nobody ever will)
                if os.getppid() != self.parent_pid:
                    raise SystemExit("API process is gone") from None
                time.sleep(0.01)

