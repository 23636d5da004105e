"""The grammar engine bound to one tokenizer: compile a `GrammarSpec` once, cache it, hand out per-sequence states.

llguidance was chosen by measurement (docs/STRUCTURED.md, tools/measure_grammar_engines.py): on SmolLM2's 49k vocab
it compiles a typical schema in ~0.8 ms (xgrammar 0.2.9: ~21 ms) and computes a mask in ~15 us median / ~50 us mean
(xgrammar: 1.5 / 6.6 us) — both far below a 10-20 ms decode step; it has no dependencies (xgrammar pulls in triton),
ships one abi3 wheel for Python 3.10-3.12 (the Neuron containers), and has the operations speculation needs: rollback,
forced tokens, prefix validation of drafts.

Errors: a schema llguidance cannot enforce raises `InvalidRequestError` whose message names the feature
("Unimplemented keys: [\"if\"]", "Unknown format: ...", look-around in a pattern, ...), param `response_format`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import InvalidRequestError
from engine.structured.spec import GrammarSpec
from engine.structured.state import GrammarState

log = logging.getLogger("specserve.structured")

# Compact, json.dumps-like separators and no free whitespace: small models otherwise loop on newlines inside a JSON
# value, and fixed separators are forced tokens (free drafts).
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CACHE_SIZE = 256


@dataclass
class StructuredStats:
    """Counters the metrics endpoint reads (engine thread writes; plain ints, read without a lock)."""

    constrained_requests: int = 0  # requests that carried a grammar
    compiled: int = 0  # grammars compiled (cache misses); constrained_requests - compiled were served from the cache
    compile_seconds: float = 0.0  # total
    forced_tokens: int = 0  # tokens proposed as free drafts because the grammar forced them


class GrammarCompiler:
    """Compiles and caches grammars for one tokenizer; thread-safe (the server validates on the event loop, the
    engine thread builds states)."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int] = (), cache_size: int = CACHE_SIZE):
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = [int(t) for t in eos_token_ids] or None
        self._lltok = None  # ~0.3-0.5 s for a 49k vocab: built on first use or by `warm()` in the background
        self._tok_lock = threading.Lock()
        self._executor = None
        self._cache: OrderedDict[str, str] = OrderedDict()  # spec key -> validated llguidance grammar
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.stats = StructuredStats()

    @property
    def lltokenizer(self):
        with self._tok_lock:
            if self._lltok is None:
                import llguidance.hf

                eos = self._eos if self._eos is None or len(self._eos) > 1 else self._eos[0]
                self._lltok = llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self.vocab_size,
                                                           eos_token=eos)
            return self._lltok

    @property
    def executor(self):
        """One llguidance executor (native thread pool) for batched mask computation; 2 threads: the CPU budget
        of the development machine, and more does not help masks that take tens of microseconds."""
        with self._tok_lock:
            if self._executor is None:
                import llguidance

                self._executor = llguidance.LLExecutor(num_threads=2)
            return self._executor

    def warm(self) -> None:
        """Build the llguidance tokenizer in a daemon thread, so the first constrained request does not wait for it."""
        def build() -> None:
            try:
                self.lltokenizer  # noqa: B018
            except Exception:  # reported again, as a request error, by the first request that needs it
                log.exception("llguidance tokenizer could not be built")

        threading.Thread(target=build, name="specserve-grammar-warm", daemon=True).start()

    def compile(self, spec: GrammarSpec) -> str:
        """The validated llguidance grammar for `spec` (cached); raises InvalidRequestError naming what is wrong."""
        lltok = self.lltokenizer  # outside the timing: built once per process, not per grammar
        with self._lock:
            hit = self._cache.get(spec.key)
            if hit is not None:
                self._cache.move_to_end(spec.key)
                return hit
            t0 = time.perf_counter()
            grammar = self._build(spec, lltok)
            seconds = time.perf_counter() - t0
            self.stats.compiled += 1
            self.stats.compile_seconds += seconds
            self._cache[spec.key] = grammar
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        log.info("compiled %s grammar in %.1f ms (%d cached)", spec.kind, seconds * 1e3, len(self._cache))
        return grammar

    def new_state(self, spec: GrammarSpec) -> GrammarState:
        """A fresh matcher at the start of the grammar (compiles on a cache miss)."""
        import llguidance

        grammar = self.compile(spec)
        matcher = llguidance.LLMatcher(self.lltokenizer, grammar, log_level=0)
        if matcher.is_error():  # validated above, so only resource limits land here
            raise InvalidRequestError(f"grammar could not be started: {matcher.get_error()}", field="structured")
        return GrammarState(matcher, self.vocab_size, self.executor)

    def _build(self, spec: GrammarSpec, lltok) -> str:
        import llguidance

        M = llguidance.LLMatcher
        try:
            if spec.kind == "json_schema":
                grammar = M.grammar_from_json_schema(spec.source, defaults=JSON_OPTIONS)
            elif spec.kind == "json_object":
                grammar = M.grammar_from_json_schema('{"type": "object"}', defaults=JSON_OPTIONS)
            elif spec.kind == "regex":
                grammar = M.grammar_from_regex(spec.source)
            elif spec.kind == "lark":
                grammar = M.grammar_from_lark(spec.source)
            else:
                raise InvalidRequestError(f"unknown grammar kind {spec.kind!r}", field="structured")
        except ValueError as e:  # not a JSON object
            raise InvalidRequestError(f"invalid JSON schema: {e}", field="structured") from None
        is_error, messages = M.validate_grammar_with_warnings(grammar, lltok)
        if is_error:
            what = "JSON schema" if spec.kind.startswith("json") else f"{spec.kind} grammar"
            raise InvalidRequestError(f"unsupported {what}: {'; '.join(messages)}", field="structured")
        return grammar
