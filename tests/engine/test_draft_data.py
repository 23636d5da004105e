"""The SmolLM2 draft's training data (tools/smollm_draft_data.py) and the loss/eval helpers of the training script."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tools.smollm_draft_data import (
    CODE_ASKS,
    CODE_MAX_LINES,
    CODE_MODULES,
    CODE_PER_MODULE,
    code_functions,
    code_manifest,
    code_prompts,
    split,
    stdlib_functions,
    training_prompts,
)
from tools.train_smollm_draft import (
    _bench_prompts,
    _figures,
    _fit_steps,
    answer_logits,
    check_no_overlap,
    coverage,
    distill_loss,
    frequent_tokens,
)

ROOT = Path(__file__).resolve().parents[2]


def _bench_modules_texts() -> list[str]:
    out = []
    for f in (ROOT / "bench/data").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            out.append(rec.get("prompt") or rec["messages"][0]["content"])
    return out


def test_code_prompts_deterministic_and_sized():
    a, b = code_prompts(), code_prompts()
    assert a == b
    assert 400 <= len(a) <= 500
    funcs = code_functions()
    per = {}
    for mod, f in funcs:
        per[mod] = per.get(mod, 0) + 1
        assert 3 <= len(f.splitlines()) <= CODE_MAX_LINES and f.startswith("def ")
    assert max(per.values()) <= CODE_PER_MODULE and set(per) <= set(CODE_MODULES)
    assert a[0] == CODE_ASKS[0].format(funcs[0][1]) and a[1] == CODE_ASKS[1].format(funcs[1][1])


def test_code_functions_come_from_no_benchmark_file():
    bench = _bench_modules_texts()
    for _, f in code_functions():
        assert not any(f.splitlines()[0] in t for t in bench), f.splitlines()[0]
    check_no_overlap(training_prompts() + code_prompts())  # raises SystemExit on overlap


def test_manifest_records_interpreter_and_hashes():
    m = code_manifest()
    assert m["python"].count(".") == 2 and len(m["prompts_sha256"]) == 64 and len(m["functions_sha256"]) == 64
    assert m["modules"] == sorted(m["modules"]) and m["prompts"] == len(code_prompts())


def test_stdlib_functions_extracts_complete_short_top_level_defs():
    src = "import x\n\ndef a(q):\n    y = q\n\n    return y\n\nclass C:\n    def m(self):\n        pass\n" \
          "def long():\n" + "    pass\n" * 30 + "def b():\n    return 1\n    # end\n"
    assert stdlib_functions(src) == ["def a(q):\n    y = q\n\n    return y\n", "def b():\n    return 1\n    # end\n"]


def test_split_holds_out_by_hash_and_partitions():
    ps = code_prompts()
    tr, ho = split(ps)
    assert sorted(tr + ho) == sorted(ps) and 0 < len(ho) < len(ps) // 8
    assert not set(tr) & set(ho)


def test_chat_bench_prompts_are_not_training_prompts():
    bench = _bench_prompts()
    assert bench and not (set(training_prompts()) | set(code_prompts())) & bench


def test_answer_logits_match_full_forward_at_masked_positions():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 50, (2, 7))
    att = torch.ones_like(ids)
    att[1, 5:] = 0
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, 2:6] = True
    mask[1, 1:4] = True
    full = m(input_ids=ids, attention_mask=att).logits[mask]  # (7, 50)
    torch.testing.assert_close(answer_logits(m, ids, att, mask), full)


def test_figures_greedy_simulation():
    # agreements T F F T T T, K=2: pass 1 accepts 1 and rejects (the target then gives token 1 itself), pass 2 rejects
    # at once (token 2 from the target), pass 3 accepts 2 (tokens 3-4) and the target's token ends the answer
    f = _figures([[True, False, False, True, True, True]], [torch.ones(6)], 1, 6, (2,), 0.7)
    g = f["greedy"][2]
    assert f["argmax_agreement"] == 4 / 6
    assert g["accepted_per_pass"] == 1.0 and g["a"] == 3 / 5 and g["tokens_per_pass"] == 2.0


def test_fit_steps_lowers_only_when_over_budget():
    assert _fit_steps(400, 50.0, 10_000) == 400
    assert _fit_steps(400, 50.0, 1000) == 200


def test_frequent_tokens_keeps_the_always_ids_then_the_most_frequent():
    recs = [{"answer": [5, 5, 5, 7, 7, 9, 2], "prompt": [13, 13, 12]}, {"answer": [7, 9, 11, 2], "prompt": [12, 3]}]
    assert frequent_tokens(recs, 3, always=[0]).tolist() == [0, 5, 7]  # 7 (3x) and 5 (3x): ties by id
    assert frequent_tokens(recs, 4, always=[0, 2]).tolist() == [0, 2, 5, 7]
    # answers' tokens first (2, 5, 7, 9, 11), then the prompts' by frequency (12 and 13 twice: by id; then 3)
    assert frequent_tokens(recs, 9, always=[0]).tolist() == [0, 2, 3, 5, 7, 9, 11, 12, 13]
    assert frequent_tokens(recs, 8, always=[0]).tolist() == [0, 2, 5, 7, 9, 11, 12, 13]
    assert coverage(recs, torch.tensor([5, 7])) == 6 / 11 and coverage(recs, None) == 1.0


def test_distill_loss_over_a_reduced_head_renormalises_the_teacher_inside_it():
    vocab, head = 10, torch.tensor([1, 4, 6])
    to_head = torch.full((vocab,), -1, dtype=torch.long)
    to_head[head] = torch.arange(3)
    tmask = torch.tensor([[True, True]])
    tids = torch.tensor([[[4, 2], [3, 5]]])  # position 0: 4 inside, 2 outside; position 1: wholly outside (dropped)
    tlogp = torch.log(torch.tensor([[[0.6, 0.4], [0.5, 0.5]]]))
    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, 5.0, 5.0]])  # (N, head)
    want = -torch.log_softmax(logits[0], -1)[1]  # teacher mass renormalised onto id 4 (row 1 of the head)
    torch.testing.assert_close(distill_loss(logits, tmask, tids, tlogp, to_head), want)
