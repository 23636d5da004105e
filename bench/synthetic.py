"""Random-init checkpoints for the engine benchmarks (`tools/bench_*.py`): sizes that make decode memory-bound on a CPU,
a word-level tokenizer as large as the vocabulary, and a draft/target pair built to agree.

Agreeing pair: the draft is a random Llama of `draft_layers` layers; the target copies the draft's embeddings, layers,
final norm and head, then inserts `extra_layers` random layers before the final norm whose residual contributions are
scaled by `scale` (their o_proj and down_proj weights multiplied by it). scale -> 0 gives acceptance -> 1; the cost ratio
c is about draft_layers / (draft_layers + extra_layers) plus the shared head's share.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from engine.sampling.params import SamplingParams

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]


def word_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """WordLevel tokenizer "t3".."t{V-1}" plus specials 0..2, so every model id decodes (to a space-separated word)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({f"t{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>")
    fast.save_pretrained(str(out_dir))


def llama_config(vocab: int, hidden: int, layers: int, *, heads: int = 16, kv_heads: int = 8,
                 intermediate: int | None = None, max_pos: int = 2048):
    import transformers

    return transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or int(hidden * 2.75) // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_pos, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=2)


def build_random_llama(out_dir: Path, *, vocab: int = 32000, hidden: int = 1024, layers: int = 8, seed: int = 0,
                       **kw: Any) -> Path:
    """Random-init LlamaForCausalLM (HF default init, fixed seed) + word tokenizer, saved in HF format."""
    import transformers

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(llama_config(vocab, hidden, layers, **kw))
    model.save_pretrained(str(out_dir), safe_serialization=True)
    word_tokenizer(out_dir, vocab)
    return out_dir


def build_agreeing_pair(root: Path, *, vocab: int = 8192, hidden: int = 1024, draft_layers: int = 1,
                        extra_layers: int = 15, scale: float = 0.05, seed: int = 0, **kw: Any) -> tuple[Path, Path]:
    """(target dir, draft dir); see the module docstring."""
    import transformers

    draft_dir, target_dir = root / "draft", root / "target"
    for d in (draft_dir, target_dir):
        d.mkdir(parents=True, exist_ok=True)
        word_tokenizer(d, vocab)
    torch.manual_seed(seed)
    draft = transformers.LlamaForCausalLM(llama_config(vocab, hidden, draft_layers, **kw))
    with torch.no_grad():  # a peaked output distribution, so greedy tokens are well defined
        draft.lm_head.weight.mul_(8.0)
    draft.save_pretrained(str(draft_dir), safe_serialization=True)
    torch.manual_seed(seed + 1)
    target = transformers.LlamaForCausalLM(llama_config(vocab, hidden, draft_layers + extra_layers, **kw))
    sd = target.state_dict()
    for k, v in draft.state_dict().items():
        sd[k] = v.clone()  # embeddings, the first draft_layers layers, norm, head
    for i in range(draft_layers, draft_layers + extra_layers):
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            sd[f"model.layers.{i}.{name}"] = sd[f"model.layers.{i}.{name}"] * scale
    target.load_state_dict(sd)
    target.save_pretrained(str(target_dir), safe_serialization=True)
    return target_dir, draft_dir


def engine_for(model_dir: Path | str | None, *, method: str = "none", draft: Path | str | None = None, **settings: Any):
    """An `LLMEngine` built the way `specserve serve` builds one (settings -> builder)."""
    from config.loader import load_settings
    from engine.builder import build_engine

    cli: dict[str, Any] = {"speculative_method": method, "device": "cpu", **settings}
    if model_dir is not None:  # None: the embedded default pair, as `specserve serve` without --model
        cli["model"] = str(model_dir)
    if draft is not None:
        cli["draft_model"] = str(draft)
    engine, _ = build_engine(load_settings(cli, environ={}))
    return engine


def run_to_idle(engine, max_steps: int = 1_000_000) -> int:
    """Step until idle; returns generated tokens."""
    n = 0
    for _ in range(max_steps):
        if not engine.has_work():
            return n
        for o in engine.step():
            n += len(o.token_ids)
    raise RuntimeError("engine did not go idle")


def drive_in_process(engine, prompts: list[list[int]], n: int, conc: int, total: int, tag: str,
                     ttfts: list[float] | None = None) -> float:
    """Tokens/s with `conc` requests kept in flight until `total` have been sent. With `ttfts`, appends each
    request's time to first token (add_request -> the step output that holds its first token), in seconds."""
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    sent = live = got = 0
    added: dict[str, float] = {}  # request id -> when it was added, until its first token
    t0 = time.perf_counter()
    while sent < total or live:
        while live < conc and sent < total:
            rid = f"{tag}-{sent}"
            added[rid] = time.perf_counter()
            engine.add_request(rid, prompts[sent % len(prompts)], params)
            sent += 1
            live += 1
        outputs = engine.step()
        now = time.perf_counter()
        for o in outputs:
            got += len(o.token_ids)
            live -= int(o.finished)
            if o.token_ids and o.request_id in added:
                t_add = added.pop(o.request_id)
                if ttfts is not None:
                    ttfts.append(now - t_add)
    return got / (time.perf_counter() - t0)
