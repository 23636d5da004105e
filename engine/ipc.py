"""The messages between the API process and the engine-core process, and their encoding.

One message per engine step goes out of the core (`StepBatch`: every request's output delta plus the counters the
metrics read), one per event-loop tick goes in (`Inbox`: the adds and aborts of that tick). Transport: ZeroMQ PUSH/PULL
over ipc:// sockets (one pair per engine incarnation, so a restarted core never reads its predecessor's queue).

Encoding: msgspec msgpack, typed, so a decode builds the engine's own dataclasses (`RequestOutput`, `StepRecord`) with
no dict walk. Measured on the dev CPU: a 32-output step round-trips in ~145 us with msgspec against ~285 us with pickle.
`SamplingParams` crosses pickled: it holds a `GrammarSpec` imported under TYPE_CHECKING (msgspec cannot resolve its
annotations) and other engineers add fields to it; pickle carries whatever it holds, at ~5 us per request.
"""

from __future__ import annotations

import pickle

import msgspec

from engine.outputs import RequestOutput
from engine.sampling.params import SamplingParams
from engine.stats import StepRecord

# -- API -> core ---------------------------------------------------------------------------------------------------


class AddRequest(msgspec.Struct, array_like=True):
    request_id: str
    prompt_ids: list[int]
    params: bytes  # pickled SamplingParams (see the module docstring)
    arrival_time: float  # time.monotonic() in the API process; CLOCK_MONOTONIC is shared by every process on the host


class Inbox(msgspec.Struct, tag="inbox", array_like=True):
    """Everything the API side asked for since its last message."""

    adds: list[AddRequest] = []
    aborts: list[str] = []


class Shutdown(msgspec.Struct, tag="shutdown", array_like=True):
    pass


# -- core -> API ---------------------------------------------------------------------------------------------------


class Ready(msgspec.Struct, tag="ready", array_like=True):
    """Sent once, after the engine is built and warmed up: what the API side needs to check and tokenize requests."""

    model_name: str
    tokenizer_path: str  # the API process loads its own tokenizer from here (tokenization stays in the API)
    vocab_size: int
    max_model_len: int
    max_num_seqs: int
    max_queue: int
    max_num_batched_tokens: int
    eos_token_ids: list[int]
    pid: int
    api_cpus: list[int] | None = None  # the CPUs --engine-cpus leaves to the API process (None: leave it unbound)


class LoadFailed(msgspec.Struct, tag="load_failed", array_like=True):
    error: str  # "ExceptionType: message", as the in-process engine reports a failed load


class Rejected(msgspec.Struct, array_like=True):
    """A request the core refused at admission (a check only the core can make, e.g. a Neuron bucket)."""

    request_id: str
    n: int
    error_type: str  # the engine.errors class name, so the API side raises the same typed error (and HTTP status)
    message: str
    field: str | None = None  # EngineError.field


class CounterSnapshot(msgspec.Struct, array_like=True):
    """engine.stats.EngineCounters as plain values (totals since this core started), plus the grammar stats."""

    steps: int
    prompt_tokens: int
    generation_tokens: int
    spec_steps: int
    draft_tokens: int
    accepted_tokens: int
    accepted_per_pos: dict[int, int]
    k_chosen: dict[int, int]
    batch_sizes: dict[int, int]
    finished: dict[str, int]
    runner_errors: int
    last_runner_error: str | None
    draft_errors: int
    last_draft_error: str | None
    structured: dict[str, float]  # engine.structured.compiler.StructuredStats fields


class StepBatch(msgspec.Struct, tag="step", array_like=True):
    """One engine step: all outputs, the step records (for the step-time histogram), counters and queue gauges."""

    outputs: list[RequestOutput]
    records: list[StepRecord]
    counters: CounterSnapshot
    num_running: int
    num_waiting: int
    num_free_slots: int
    rejected: list[Rejected] = []


class Fatal(msgspec.Struct, tag="fatal", array_like=True):
    """The core's loop raised; it exits right after sending this (the API side fails in-flight work and restarts)."""

    error: str


ToCore = Inbox | Shutdown
FromCore = Ready | LoadFailed | StepBatch | Fatal


def _enc_hook(obj: object) -> object:
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


class Codec:
    """Encoders/decoders for one side. msgspec's Encoder/Decoder objects are reused: building them per call costs
    more than the encode itself."""

    def __init__(self) -> None:
        self._enc = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
        self._to_core = msgspec.msgpack.Decoder(ToCore)
        self._from_core = msgspec.msgpack.Decoder(FromCore)

    def encode(self, msg: msgspec.Struct) -> bytes:
        return self._enc.encode(msg)

    def decode_to_core(self, data: bytes) -> Inbox | Shutdown:
        return self._to_core.decode(data)

    def decode_from_core(self, data: bytes) -> Ready | LoadFailed | StepBatch | Fatal:
        return self._from_core.decode(data)


def pack_params(params: SamplingParams) -> bytes:
    return pickle.dumps(params, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_params(data: bytes) -> SamplingParams:
    # NOTE: only the API process of this server writes these bytes, over a socket in a private temp directory.
    return pickle.loads(data)  # noqa: S301


def snapshot_counters(counters, structured_stats) -> CounterSnapshot:
    """Copy the core's live counters (engine.stats.EngineCounters) into a message."""
    c = counters
    return CounterSnapshot(
        steps=c.steps, prompt_tokens=c.prompt_tokens, generation_tokens=c.generation_tokens, spec_steps=c.spec_steps,
        draft_tokens=c.draft_tokens, accepted_tokens=c.accepted_tokens, accepted_per_pos=dict(c.accepted_per_pos),
        k_chosen=dict(c.k_chosen), batch_sizes=dict(c.batch_sizes), finished=dict(c.finished),
        runner_errors=c.runner_errors, last_runner_error=c.last_runner_error, draft_errors=c.draft_errors,
        last_draft_error=c.last_draft_error,
        structured={k: float(v) for k, v in vars(structured_stats).items() if isinstance(v, (int, float))},
    )
