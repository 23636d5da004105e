#!/usr/bin/env python3
"""Train specserve's bundled demo model pair (target + draft) from the running Python's standard library.

Reproducible recipe (fixed seeds; corpus = the sorted *.py files of ``sysconfig.get_paths()["stdlib"]``):

1. corpus   every *.py file under the stdlib directory (site-packages excluded), sorted by relative path, decoded as
            UTF-8 (files that are not valid UTF-8 are skipped and counted). A file is held out for evaluation when
            sha256(relative path) mod 50 == 0 (about 2 %); it never reaches the tokenizer or the models.
2. tokenizer byte-level BPE (``tokenizers``), 4096 tokens incl. specials, with a chat template
            (<|system|>/<|user|>/<|assistant|> ... <|end|>), BOS/EOS/PAD, saved through PreTrainedTokenizerFast.
3. target   LlamaForCausalLM, 8 layers x 256 wide (tied embeddings), next-token cross-entropy, AdamW + warmup +
            cosine decay, bf16 autocast on CPU, grad clipping.
4. draft    LlamaForCausalLM, 1 layer x 256 wide, initialised as the target truncated to its first layer, then
            distilled from the target (forward KL to the target's soft labels on the corpus, DistillSpec-style).
5. eval     held-out loss and bits per byte of both, greedy K=4 speculative acceptance of draft vs target on held-out
            prompts, decode step cost ratio (batch 1, KV cache, plain torch), greedy samples, degeneration check.
6. save     bf16 safetensors + tokenizer files into <out>/target and <out>/draft, and a model card <out>/README.md.

About 10 % of the training text is chat turns cut from training files, wrapped in the chat template ("continue this code" turns) so that
chat requests produce code and end with <|end|>.

Training length is bounded by steps *and* wall time (``--target-minutes``/``--draft-minutes``); the learning-rate
schedule follows whichever budget is used up faster, so a run on a busy machine still ends with a decayed LR. For a
bit-exact rerun give steps only (``--target-minutes 0 --draft-minutes 0``), on the same torch build and thread count.

Usage:  nice -n 10 python tools/train_demo_pair.py --out engine/demo_pair --work /tmp/demo_pair_work
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import random
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.models.hf_compat import make_config_portable  # noqa: E402

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END = range(len(SPECIAL_TOKENS))
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
HELD_OUT_MOD = 50
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

SAMPLE_PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import os\nimport sys\n\n\nclass FileCache:\n    \"\"\"A small cache of file contents.\"\"\"\n\n    def __init__(self",
    "    def __repr__(self):\n        return",
]

LOG_FILE = None


def log(*args) -> None:
    msg = time.strftime("%H:%M:%S ") + " ".join(str(a) for a in args)
    print(msg, flush=True)
    if LOG_FILE:
        with open(LOG_FILE, "a") as f:
            f.write(msg + "\n")


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------- corpus
def load_corpus() -> dict:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    rels = [p.relative_to(root).as_posix() for p in paths]
    train, held, skipped = [], [], []
    content_hash = hashlib.sha256()
    for rel, p in zip(rels, paths, strict=True):
        data = p.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(rel)
            continue
        content_hash.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        is_held = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % HELD_OUT_MOD == 0
        (held if is_held else train).append((rel, text))
    return {
        "root": str(root),
        "python": platform.python_version(),
        "n_files": len(rels),
        "file_list_sha256": hashlib.sha256("\n".join(rels).encode()).hexdigest(),
        "content_sha256": content_hash.hexdigest(),
        "skipped_non_utf8": len(skipped),
        "train": train,
        "held": held,
        "train_bytes": sum(len(t.encode()) for _, t in train),
        "held_bytes": sum(len(t.encode()) for _, t in held),
    }


# -------------------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[3:], model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    # Keep the template inside tokenizer_config.json too, so older transformers (which ignore chat_template.jinja)
    # render it as well.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    # Portable across transformers 4.x and 5.x: the generic fast class and the 4.x name of the extra specials.
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("extra_special_tokens", None)
    cfg["additional_special_tokens"] = SPECIAL_TOKENS[3:]
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return fast


def token_byte_lengths(tok) -> torch.Tensor:
    """UTF-8 byte length of every token id (byte-level BPE: one symbol per byte; special tokens count 0 bytes)."""
    n = len(tok)
    lens = torch.zeros(n, dtype=torch.long)
    for token, idx in tok.get_vocab().items():
        if idx >= len(SPECIAL_TOKENS):
            lens[idx] = len(token)
    return lens


def chat_doc(rng: random.Random, text: str) -> str | None:
    """A 'continue this code' chat turn cut from a training file, in the chat template's format."""
    lines = text.splitlines(keepends=True)
    if len(lines) < 12:
        return None
    start = rng.randrange(0, len(lines) - 10)
    n_prompt = rng.randint(2, 8)
    n_answer = rng.randint(4, 30)
    prompt = "".join(lines[start:start + n_prompt]).rstrip("\n")
    answer = "".join(lines[start + n_prompt:start + n_prompt + n_answer]).rstrip("\n")
    if not prompt.strip() or not answer.strip():
        return None
    system = rng.choice(["", "", "You are a helpful assistant that writes Python.\n"])
    parts = []
    if system:
        parts.append(f"<|system|>\n{system.rstrip()}<|end|>\n")
    ask = rng.choice(["Continue this code:\n", "Complete the following Python code.\n", ""])
    parts.append(f"<|user|>\n{ask}{prompt}<|end|>\n<|assistant|>\n{answer}<|end|>\n")
    return "".join(parts)


def encode_stream(tok, docs: list[str]) -> torch.Tensor:
    ids: list[int] = []
    enc = tok.backend_tokenizer.encode_batch(docs, add_special_tokens=False)
    for e in enc:
        ids.append(BOS)
        ids.extend(e.ids)
        ids.append(EOS)
    return torch.tensor(ids, dtype=torch.int32)


# ----------------------------------------------------------------------------------------------------------- models
def make_config(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, inter: int, max_pos: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
        tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, rms_norm_eps=1e-5,
        rope_theta=10000.0, attention_bias=False, mlp_bias=False, hidden_act="silu",
    )


def batch_at(stream: torch.Tensor, gen: torch.Generator, batch: int, seq: int) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=gen)
    return torch.stack([stream[s:s + seq + 1] for s in starts.tolist()]).long()


def lr_at(progress: float, peak: float, warmup_frac: float, final_frac: float = 0.1) -> float:
    if progress < warmup_frac:
        return peak * progress / warmup_frac
    p = (progress - warmup_frac) / max(1e-9, 1 - warmup_frac)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


@torch.no_grad()
def greedy(model, ids: list[int], n: int, stop: tuple[int, ...] = ()) -> list[int]:
    """Plain greedy decode with the HF KV cache (no sampling)."""
    model.eval()
    x = torch.tensor([ids])
    out = model(x, use_cache=True)
    cache = out.past_key_values
    res = []
    for _ in range(n):
        t = int(out.logits[0, -1].argmax())
        res.append(t)
        if t in stop or len(ids) + len(res) >= model.config.max_position_embeddings:
            break
        out = model(torch.tensor([[t]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
    return res


def max_run(ids: list[int]) -> int:
    best = cur = 0
    prev = None
    for t in ids:
        cur = cur + 1 if t == prev else 1
        prev = t
        best = max(best, cur)
    return best


def train_loop(name, model, step_fn, *, steps, minutes, peak_lr, warmup_frac, wd, ckpt_dir, sample_fn,
               sample_every, log_every=20):
    params_decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    params_nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": params_decay, "weight_decay": wd},
                             {"params": params_nodecay, "weight_decay": 0.0}],
                            lr=peak_lr, betas=(0.9, 0.95), eps=1e-8)
    budget_s = minutes * 60 if minutes > 0 else float("inf")
    t0 = time.time()
    step = 0
    ema = None
    model.train()
    while True:
        progress = max(step / steps, (time.time() - t0) / budget_s)
        if progress >= 1.0:
            break
        lr = lr_at(progress, peak_lr, warmup_frac)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = step_fn(step)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % log_every == 0:
            log(f"[{name}] step {step} progress {progress:.3f} lr {lr:.2e} loss {loss.item():.4f} ema {ema:.4f} "
                f"gnorm {float(gn):.2f} elapsed {time.time() - t0:.0f}s")
        if sample_every and step % sample_every == 0:
            model.eval()
            sample_fn(model)
            model.train()
            torch.save(model.state_dict(), ckpt_dir / f"{name}_ckpt.pt")
    model.eval()
    torch.save(model.state_dict(), ckpt_dir / f"{name}_ckpt.pt")
    return {"steps": step, "seconds": round(time.time() - t0, 1), "final_train_loss_ema": round(ema or 0.0, 4)}


# ------------------------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def heldout_loss(model, stream: torch.Tensor, byte_len: torch.Tensor, seq: int, max_tokens: int) -> dict:
    model.eval()
    n_win = min(len(stream) - 1, max_tokens) // seq
    nats = 0.0
    tokens = 0
    nbytes = 0
    B = 8
    for i in range(0, n_win, B):
        xs = [stream[(i + j) * seq:(i + j) * seq + seq + 1].long() for j in range(min(B, n_win - i))]
        x = torch.stack(xs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x[:, :-1]).logits
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        nats += float(ce)
        tokens += x[:, 1:].numel()
        nbytes += int(byte_len[x[:, 1:]].sum())
    return {"loss_nats_per_token": round(nats / tokens, 4), "bits_per_byte": round(nats / math.log(2) / nbytes, 4),
            "tokens": tokens, "bytes": nbytes}


@torch.no_grad()
def argmax_agreement(draft, target, stream: torch.Tensor, seq: int, max_tokens: int) -> float:
    n_win = min(len(stream) - 1, max_tokens) // seq
    agree = total = 0
    for i in range(0, n_win, 8):
        x = torch.stack([stream[(i + j) * seq:(i + j) * seq + seq].long() for j in range(min(8, n_win - i))])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a = draft(x).logits.argmax(-1)
            b = target(x).logits.argmax(-1)
        agree += int((a == b).sum())
        total += a.numel()
    return round(agree / total, 4)


@torch.no_grad()
def spec_acceptance(draft, target, prompts: list[list[int]], k: int, new_tokens: int) -> dict:
    """Greedy speculative decoding, simulated: the draft proposes k tokens greedily, the target scores them in one
    pass; the longest prefix matching the target's greedy choices is accepted, plus one target token.

    per_token_acceptance  a = accepted / (accepted + rejections): the probability that a proposed token is accepted
                          given that all before it were (the `a` of E = (1 - a^(k+1)) / (1 - a)).
    draft_acceptance_rate accepted / proposed (vLLM's spec_decode draft acceptance rate).
    """
    draft.eval()
    target.eval()
    accepted = proposed = rejections = passes = generated = 0
    per_pos = [0] * k
    for p in prompts:
        ctx = list(p)
        made = 0
        while made < new_tokens:
            props = []
            for _ in range(k):
                logits = draft(torch.tensor([ctx + props])).logits[0, -1]
                props.append(int(logits.argmax()))
            tl = target(torch.tensor([ctx + props])).logits[0, len(ctx) - 1:]
            tgt = tl.argmax(-1).tolist()  # k+1 target greedy tokens
            n = 0
            while n < k and props[n] == tgt[n]:
                per_pos[n] += 1
                n += 1
            accepted += n
            proposed += k
            rejections += 1 if n < k else 0
            passes += 1
            ctx += props[:n] + [tgt[n]]
            made += n + 1
            generated += n + 1
    return {
        "k": k,
        "prompts": len(prompts),
        "per_token_acceptance": round(accepted / max(1, accepted + rejections), 4),
        "draft_acceptance_rate": round(accepted / max(1, proposed), 4),
        "accepted_per_position": [round(c / passes, 4) for c in per_pos],
        "tokens_per_target_pass": round(generated / passes, 3),
    }


@torch.no_grad()
def decode_step_ms(model, dtype, n: int = 150, ctx: int = 64) -> float:
    import copy

    m = copy.deepcopy(model).to(dtype).eval()
    ids = torch.randint(len(SPECIAL_TOKENS), m.config.vocab_size, (1, ctx), generator=torch.Generator().manual_seed(0))
    out = m(ids, use_cache=True)
    cache = out.past_key_values
    t = out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = m(t, past_key_values=cache, use_cache=True)
        times.append(time.perf_counter() - t0)
        cache = out.past_key_values
        t = out.logits[:, -1:].argmax(-1)
    times.sort()
    return times[len(times) // 2] * 1e3


def cost_ratio(draft, target) -> dict:
    """Median batch-1 decode step time (KV cache) of each model per round; rounds interleaved; best round kept."""
    res = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        d_ms, t_ms = [], []
        for _ in range(5):
            d_ms.append(decode_step_ms(draft, dtype, n=100))
            t_ms.append(decode_step_ms(target, dtype, n=100))
        d, t = min(d_ms), min(t_ms)  # least-disturbed round: the machine is shared
        res[name] = {"draft_ms": round(d, 3), "target_ms": round(t, 3), "ratio": round(d / t, 3)}
    return res


# ------------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="engine/demo_pair", help="package dir receiving target/, draft/ and README.md")
    ap.add_argument("--work", default="/tmp/demo_pair_work", help="scratch dir: checkpoints, log, metrics")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--target-layers", type=int, default=8)
    ap.add_argument("--target-hidden", type=int, default=256)
    ap.add_argument("--target-inter", type=int, default=640)
    ap.add_argument("--draft-layers", type=int, default=1)
    ap.add_argument("--draft-hidden", type=int, default=256)
    ap.add_argument("--draft-inter", type=int, default=640)
    ap.add_argument("--target-steps", type=int, default=2000)
    ap.add_argument("--target-batch", type=int, default=8)
    ap.add_argument("--target-lr", type=float, default=2e-3)
    ap.add_argument("--target-minutes", type=float, default=45.0, help="wall-time cap (0 = steps only)")
    ap.add_argument("--draft-steps", type=int, default=2000)
    ap.add_argument("--draft-batch", type=int, default=8)
    ap.add_argument("--draft-lr", type=float, default=3e-3)
    ap.add_argument("--draft-minutes", type=float, default=16.0, help="wall-time cap (0 = steps only)")
    ap.add_argument("--chat-frac", type=float, default=0.1)
    ap.add_argument("--eval-tokens", type=int, default=150_000)
    ap.add_argument("--eval-prompts", type=int, default=40)
    ap.add_argument("--eval-new-tokens", type=int, default=48)
    ap.add_argument("--resume-target", action="store_true", help="reuse <work>/target_ckpt.pt instead of training")
    ap.add_argument("--target-extra-minutes", type=float, default=0.0,
                    help="with --resume-target: continue training the checkpoint this long (fresh AdamW, short warmup, "
                         "cosine from --target-extra-lr)")
    ap.add_argument("--target-extra-lr", type=float, default=8e-4)
    args = ap.parse_args(argv)

    global LOG_FILE
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    LOG_FILE = str(work / "train.log")
    torch.set_num_threads(args.threads)
    seed_all(args.seed)
    t_start = time.time()
    from transformers import GenerationConfig, LlamaForCausalLM

    log("argv", " ".join(sys.argv), "torch", torch.__version__)
    corpus = load_corpus()
    log(f"corpus: python {corpus['python']} {corpus['n_files']} files, train {len(corpus['train'])} files "
        f"{corpus['train_bytes'] / 1e6:.1f} MB, held-out {len(corpus['held'])} files {corpus['held_bytes'] / 1e6:.2f} MB, "
        f"skipped {corpus['skipped_non_utf8']} non-UTF-8, list sha256 {corpus['file_list_sha256'][:16]}")

    tok_dir = work / "tokenizer"
    tok = train_tokenizer([t for _, t in corpus["train"]], args.vocab, tok_dir)
    vocab = len(tok)
    byte_len = token_byte_lengths(tok)
    log(f"tokenizer: {vocab} tokens")

    rng = random.Random(args.seed)
    docs = [t for _, t in corpus["train"]]
    # chat turns: about chat_frac of the training tokens (several short turns cut from each file)
    chats: list[str] = []
    budget = args.chat_frac * corpus["train_bytes"]
    chat_bytes = 0
    while chat_bytes < budget:
        c = chat_doc(rng, docs[rng.randrange(len(docs))])
        if c:
            chats.append(c)
            chat_bytes += len(c)
    all_docs = docs + chats
    rng.shuffle(all_docs)
    train_stream = encode_stream(tok, all_docs)
    held_stream = encode_stream(tok, [t for _, t in corpus["held"]])
    log(f"train stream {len(train_stream)} tokens ({len(chats)} chat docs), held-out stream {len(held_stream)} tokens, "
        f"{corpus['held_bytes'] / len(held_stream):.2f} bytes/token (held-out)")

    held_ids = [tok.encode(t, add_special_tokens=False) for _, t in corpus["held"]]
    prompt_rng = random.Random(args.seed + 1)
    prompts = []
    for ids in held_ids:
        if len(ids) > 200:
            s = prompt_rng.randrange(0, len(ids) - 200)
            prompts.append(ids[s:s + prompt_rng.randint(32, 96)])
    prompt_rng.shuffle(prompts)
    prompts = prompts[: args.eval_prompts]

    def sample_fn(model):
        for sp in SAMPLE_PROMPTS[:2]:
            ids = tok.encode(sp, add_special_tokens=False)
            out = greedy(model, [BOS] + ids, 80, stop=(EOS, END))
            log(f"  sample (max run {max_run(out)}): {(sp + tok.decode(out))!r}")

    # ---------------------------------------------------------------- target
    seed_all(args.seed)
    tcfg = make_config(vocab, args.target_hidden, args.target_layers, args.target_hidden // 64, 2, args.target_inter,
                       args.seq)
    target = LlamaForCausalLM(tcfg)
    log(f"target params {sum(p.numel() for p in target.parameters()) / 1e6:.2f}M")
    gen = torch.Generator().manual_seed(args.seed)

    def target_step(step):
        x = batch_at(train_stream, gen, args.target_batch, args.seq)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = target(x[:, :-1]).logits
        return F.cross_entropy(logits.float().reshape(-1, vocab), x[:, 1:].reshape(-1))

    if args.resume_target and (work / "target_ckpt.pt").exists():
        target.load_state_dict(torch.load(work / "target_ckpt.pt"))
        target.eval()
        tstats = json.loads((work / "target_stats.json").read_text())
        log("target: resumed from checkpoint", tstats)
        if args.target_extra_minutes > 0:
            sample_fn(target)
            extra = train_loop("target", target, target_step, steps=10 ** 9, minutes=args.target_extra_minutes,
                               peak_lr=args.target_extra_lr, warmup_frac=0.03, wd=0.1, ckpt_dir=work,
                               sample_fn=sample_fn, sample_every=200)
            tstats = {"steps": tstats["steps"] + extra["steps"], "seconds": tstats["seconds"] + extra["seconds"],
                      "final_train_loss_ema": extra["final_train_loss_ema"],
                      "first_command": tstats.get("first_command"),
                      "phases": tstats.get("phases", [tstats]) + [dict(extra, resumed=True,
                                                                       peak_lr=args.target_extra_lr)]}
            (work / "target_stats.json").write_text(json.dumps(tstats))
    else:
        tstats = train_loop("target", target, target_step, steps=args.target_steps, minutes=args.target_minutes,
                            peak_lr=args.target_lr, warmup_frac=0.04, wd=0.1, ckpt_dir=work, sample_fn=sample_fn,
                            sample_every=250)
        (work / "target_stats.json").write_text(json.dumps(tstats))
    log("target done", tstats)
    sample_fn(target)

    # ---------------------------------------------------------------- draft (distilled)
    seed_all(args.seed + 7)
    dcfg = make_config(vocab, args.draft_hidden, args.draft_layers, args.draft_hidden // 64, 2, args.draft_inter,
                       args.seq)
    draft = LlamaForCausalLM(dcfg)
    with torch.no_grad():
        same_shape = (args.draft_hidden == args.target_hidden and args.draft_inter == args.target_inter)
        if same_shape:  # start as the target truncated to its first layers (embeddings, layers, final norm)
            state = {k: v for k, v in target.state_dict().items()
                     if not k.startswith("model.layers.") or int(k.split(".")[2]) < args.draft_layers}
            draft.load_state_dict(state, strict=False)
        else:  # embeddings: the target's, projected onto their top principal directions
            E = target.get_input_embeddings().weight.float()
            _, _, Vh = torch.linalg.svd(E, full_matrices=False)
            Ed = E @ Vh[: args.draft_hidden].T
            Ed = Ed * (E.norm(dim=1, keepdim=True).mean() / Ed.norm(dim=1, keepdim=True).mean())
            draft.get_input_embeddings().weight.copy_(Ed)
    log(f"draft params {sum(p.numel() for p in draft.parameters()) / 1e6:.2f}M")
    teacher = LlamaForCausalLM(tcfg)
    teacher.load_state_dict(target.state_dict())
    teacher = teacher.to(torch.bfloat16).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    dgen = torch.Generator().manual_seed(args.seed + 7)

    def draft_step(step):
        x = batch_at(train_stream, dgen, args.draft_batch, args.seq)[:, :-1]
        with torch.no_grad():
            t_logp = F.log_softmax(teacher(x).logits.float(), -1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = draft(x).logits
        d_logp = F.log_softmax(logits.float(), -1)
        # forward KL(target || draft) per position, averaged over positions
        return (t_logp.exp() * (t_logp - d_logp)).sum(-1).mean()

    dstats = train_loop("draft", draft, draft_step, steps=args.draft_steps, minutes=args.draft_minutes,
                        peak_lr=args.draft_lr, warmup_frac=0.03, wd=0.05, ckpt_dir=work, sample_fn=sample_fn,
                        sample_every=0)
    log("draft done", dstats)
    teacher = None  # free it before evaluation

    # ---------------------------------------------------------------- eval
    metrics: dict = {"target_train": tstats, "draft_train": dstats}
    metrics["target_heldout"] = heldout_loss(target, held_stream, byte_len, args.seq, args.eval_tokens)
    metrics["draft_heldout"] = heldout_loss(draft, held_stream, byte_len, args.seq, args.eval_tokens)
    log("heldout", metrics["target_heldout"], metrics["draft_heldout"])
    metrics["argmax_agreement"] = argmax_agreement(draft, target, held_stream, args.seq, args.eval_tokens)
    metrics["acceptance"] = spec_acceptance(draft, target, prompts, 4, args.eval_new_tokens)
    log("acceptance", metrics["argmax_agreement"], metrics["acceptance"])
    runs_t, runs_d = [], []
    for p in prompts:
        runs_t.append(max_run(greedy(target, p, 128, stop=(EOS,))))
        runs_d.append(max_run(greedy(draft, p, 128, stop=(EOS,))))
    metrics["degeneration"] = {"prompts": len(prompts), "new_tokens": 128,
                               "target_max_run": max(runs_t), "draft_max_run": max(runs_d),
                               "target_prompts_with_run_over_8": sum(r > 8 for r in runs_t)}
    log("degeneration", metrics["degeneration"])
    metrics["cost"] = cost_ratio(draft, target)
    log("cost", metrics["cost"])
    samples = []
    for sp in SAMPLE_PROMPTS:
        ids = tok.encode(sp, add_special_tokens=False)
        out = greedy(target, [BOS] + ids, 120, stop=(EOS, END))
        samples.append({"prompt": sp, "completion": tok.decode(out), "max_run": max_run(out)})
    chat_ids = tok.apply_chat_template([{"role": "user", "content": "Continue this code:\ndef is_prime(n):"}],
                                       add_generation_prompt=True, tokenize=True)
    if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys"):
        chat_ids = chat_ids["input_ids"]
    out = greedy(target, list(chat_ids), 120, stop=(EOS, END))
    samples.append({"prompt": tok.decode(chat_ids), "completion": tok.decode(out), "max_run": max_run(out),
                    "chat": True})
    metrics["samples"] = samples
    for s in samples:
        log("sample", json.dumps(s))

    # ---------------------------------------------------------------- save
    out = Path(args.out)
    gen_cfg = GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, END], pad_token_id=PAD, do_sample=False,
                               max_new_tokens=256)
    sizes = {}
    for name, model in (("target", target), ("draft", draft)):
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        model.to(torch.bfloat16).save_pretrained(str(d), safe_serialization=True)
        make_config_portable(d)  # rope_theta + torch_dtype beside rope_parameters + dtype: readable by 4.x too
        gen_cfg.save_pretrained(str(d))
        for f in TOKENIZER_FILES:
            if (tok_dir / f).exists():
                shutil.copy(tok_dir / f, d / f)
        sizes[name] = sum(f.stat().st_size for f in d.iterdir())
    metrics["sizes_bytes"] = sizes
    metrics["corpus"] = {k: v for k, v in corpus.items() if k not in ("train", "held")}
    metrics["corpus"]["train_files"] = len(corpus["train"])
    metrics["corpus"]["held_files"] = len(corpus["held"])
    metrics["corpus"]["held_paths"] = [r for r, _ in corpus["held"]]
    metrics["total_seconds"] = round(time.time() - t_start, 1)
    metrics["command"] = "nice -n 10 python " + " ".join([sys.argv[0]] + sys.argv[1:])
    metrics["env"] = {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                      "machine": platform.machine()}
    metrics["args"] = vars(args)
    metrics["configs"] = {"target": {k: getattr(tcfg, k) for k in ("hidden_size", "num_hidden_layers",
                                                                  "intermediate_size", "num_attention_heads",
                                                                  "num_key_value_heads")},
                          "draft": {k: getattr(dcfg, k) for k in ("hidden_size", "num_hidden_layers",
                                                                 "intermediate_size", "num_attention_heads",
                                                                 "num_key_value_heads")}}
    metrics["params"] = {"target": sum(p.numel() for p in target.parameters()),
                         "draft": sum(p.numel() for p in draft.parameters())}
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "README.md").write_text(model_card(metrics))
    log("saved to", out, "sizes", sizes, "total", sum(sizes.values()) + (out / "README.md").stat().st_size)
    return 0


def model_card(m: dict) -> str:
    c = m["corpus"]
    th, dh = m["target_heldout"], m["draft_heldout"]
    acc, cost, deg = m["acceptance"], m["cost"], m["degeneration"]
    total_mb = sum(m["sizes_bytes"].values()) / 1e6
    tc, dc = m["configs"]["target"], m["configs"]["draft"]
    goals = [
        ("greedy per-token acceptance >= 0.6 (K=4, held-out)", acc["per_token_acceptance"] >= 0.6,
         f"{acc['per_token_acceptance']:.3f}"),
        ("draft/target decode cost ratio <= 0.2 (batch 1, fp32)", cost["fp32"]["ratio"] <= 0.2,
         f"{cost['fp32']['ratio']:.3f}"),
        ("draft/target decode cost ratio <= 0.2 (batch 1, bf16)", cost["bf16"]["ratio"] <= 0.2,
         f"{cost['bf16']['ratio']:.3f}"),
        ("no greedy run of one token longer than 8 (target, held-out prompts)", deg["target_max_run"] <= 8,
         f"max run {deg['target_max_run']}"),
        ("all files <= 25 MB", total_mb <= 25, f"{total_mb:.2f} MB"),
    ]
    lines = [
        "# specserve-demo: bundled target + draft pair",
        "",
        "A tiny Llama-architecture model pair trained by `tools/train_demo_pair.py` on the Python standard library's "
        "source, so that `specserve serve` works offline out of the box and speculative decoding has a real draft to "
        "accept. It writes Python-looking code; it is a demo, not a useful assistant.",
        "",
        "| | target (`target/`) | draft (`draft/`) |",
        "|---|---|---|",
        f"| architecture | LlamaForCausalLM, {tc['num_hidden_layers']} layers x {tc['hidden_size']} "
        f"(MLP {tc['intermediate_size']}, {tc['num_attention_heads']} heads / {tc['num_key_value_heads']} KV), tied "
        f"embeddings | LlamaForCausalLM, {dc['num_hidden_layers']} layer x {dc['hidden_size']} "
        f"(MLP {dc['intermediate_size']}, {dc['num_attention_heads']} heads / {dc['num_key_value_heads']} KV), tied "
        "embeddings |",
        f"| parameters | {m['params']['target'] / 1e6:.2f} M | {m['params']['draft'] / 1e6:.2f} M |",
        f"| weights | bf16 safetensors, {m['sizes_bytes']['target'] / 1e6:.2f} MB dir | bf16 safetensors, "
        f"{m['sizes_bytes']['draft'] / 1e6:.2f} MB dir |",
        f"| training | {m['target_train']['steps']} steps x {m['args']['target_batch']} x {m['args']['seq']} tokens, "
        f"next-token CE, {m['target_train']['seconds'] / 60:.1f} min | distilled from the target (forward KL to its "
        f"soft labels), {m['draft_train']['steps']} steps x {m['args']['draft_batch']} x {m['args']['seq']} tokens, "
        f"{m['draft_train']['seconds'] / 60:.1f} min |",
        f"| held-out loss (nats/token) | {th['loss_nats_per_token']:.3f} | {dh['loss_nats_per_token']:.3f} |",
        f"| held-out bits per byte | {th['bits_per_byte']:.3f} | {dh['bits_per_byte']:.3f} |",
        f"| decode step, batch 1, fp32 | {cost['fp32']['target_ms']:.2f} ms | {cost['fp32']['draft_ms']:.2f} ms |",
        f"| decode step, batch 1, bf16 | {cost['bf16']['target_ms']:.2f} ms | {cost['bf16']['draft_ms']:.2f} ms |",
        "",
        "Context length 512 (both trained at 512). Tokenizer: byte-level BPE, "
        f"{m['args']['vocab']} tokens, shared by both (copied into each directory so each loads on its own). "
        "Chat template: `<|bos|><|system|>\\n...<|end|>\\n<|user|>\\n...<|end|>\\n<|assistant|>\\n`; generation "
        "stops on `<|eos|>` or `<|end|>` (`generation_config.json`).",
        "",
        "## Speculative decoding figures (measured by the training script)",
        "",
        f"- Greedy speculative decoding simulated on {acc['prompts']} held-out prompts, K = {acc['k']}, "
        f"{m['args']['eval_new_tokens']} new tokens each: **per-token acceptance a = {acc['per_token_acceptance']:.3f}** "
        "(accepted / (accepted + rejections), the `a` of E = (1 - a^(K+1)) / (1 - a)); draft acceptance rate "
        f"accepted / proposed = {acc['draft_acceptance_rate']:.3f}; **{acc['tokens_per_target_pass']:.2f} tokens per "
        f"target pass**; acceptance by position {acc['accepted_per_position']}.",
        f"- Draft argmax = target argmax on {m['argmax_agreement'] * 100:.1f} % of held-out positions (teacher forcing).",
        f"- Decode cost ratio draft/target at batch 1 with KV cache (plain torch, {m['env']['threads']} threads, "
        f"median per round, best of 5 rounds): **{cost['fp32']['ratio']:.3f} in fp32**, {cost['bf16']['ratio']:.3f} in bf16. At these sizes a "
        "step is dominated by per-layer overhead, not FLOPs, so the ratio tracks the layer count.",
        f"- Degeneration: greedy 128-token continuations of the {deg['prompts']} held-out prompts: longest run of one "
        f"repeated token {deg['target_max_run']} (target), {deg['draft_max_run']} (draft); target prompts with a run > 8: "
        f"{deg['target_prompts_with_run_over_8']}.",
        "",
        "## Goals",
        "",
        "| goal | met | measured |",
        "|---|---|---|",
    ]
    lines += [f"| {g} | {'yes' if ok else 'no'} | {v} |" for g, ok, v in goals]
    lines += ["", "## Sample completions (target, greedy)", ""]
    for s in m["samples"]:
        kind = "chat" if s.get("chat") else "completion"
        lines += [f"Prompt ({kind}):", "", "```", s["prompt"], "```", "", f"Completion (longest token run {s['max_run']}):",
                  "", "```", s["completion"], "```", ""]
    lines += [
        "## Data and reproduction",
        "",
        f"- Corpus: the `*.py` files of the Python {c['python']} standard library (`sysconfig.get_paths()['stdlib']`, "
        f"site-packages excluded), sorted by relative path: {c['n_files']} files, {c['skipped_non_utf8']} skipped as "
        f"not UTF-8; {c['train_files']} train files ({c['train_bytes'] / 1e6:.1f} MB), {c['held_files']} held out "
        f"({c['held_bytes'] / 1e6:.2f} MB) by sha256(relative path) mod {HELD_OUT_MOD} == 0.",
        f"- sha256 of the sorted file list (relative paths joined by newlines): `{c['file_list_sha256']}`",
        f"- sha256 over (path, sha256(content)) of the files used: `{c['content_sha256']}`",
        f"- Environment: Python {m['env']['python']}, torch {m['env']['torch']}, {m['env']['threads']} CPU threads "
        f"({m['env']['machine']}), bf16 autocast.",
        f"- Command: `{m['command']}`",
    ]
    phases = m["target_train"].get("phases")
    if phases:
        lines += [
            f"- The target was trained in {len(phases)} runs of this script: first "
            f"`{m['target_train'].get('first_command', '(same script, default arguments)')}` "
            f"({phases[0]['steps']} steps, {phases[0]['seconds'] / 60:.1f} min, its own draft and evaluation "
            "discarded), then the command above resumed the target checkpoint ("
            + ", ".join(f"{p['steps']} more steps in {p['seconds'] / 60:.1f} min from peak LR {p.get('peak_lr')}"
                        for p in phases[1:])
            + "), distilled the draft from it and evaluated both.",
        ]
    lines += [
        f"- Wall time of the run that wrote these files (corpus, tokenizer, "
        f"{'target continuation' if phases else 'target'}, draft, evaluation): {m['total_seconds'] / 60:.1f} min. "
        "Training length is capped by steps and by wall time (`--target-minutes`, `--draft-minutes`), so step counts "
        "depend on the machine's load; give `--target-minutes 0 --draft-minutes 0` for a step-exact rerun.",
        f"- About {m['args']['chat_frac'] * 100:.0f} % of the training text is short 'continue this code' chat turns "
        "cut from the training files and rendered in the chat template, so chat requests get code and stop.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
