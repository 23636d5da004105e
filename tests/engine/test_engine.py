"""The engine end to end on a tiny random Llama: continuous batching, stops, aborts, limits, bad input."""

from __future__ import annotations

import pytest

from engine.errors import InvalidRequestError, PromptTooLongError, QueueFullError
from engine.sampling.params import SamplingParams
from tests.helpers.engines import final, greedy, make_engine, run_all, text_of, tokens_of

PROMPTS = ["def add(a, b):", "for i in range(10):", "class Point:", "import os\nimport sys", "The quick brown fox",
           "x = [1, 2, 3]", "if __name__ == '__main__':", "Numbers 0123456789"]


@pytest.fixture(scope="module")
def engine(tiny_pair):
    return make_engine(tiny_pair[0], max_num_seqs=4, max_queue=64, max_num_batched_tokens=32, max_model_len=128)


def alone(engine, prompt_ids, params):
    engine.add_request("solo", prompt_ids, params)
    return tokens_of(run_all(engine)["solo"])


def test_request_joining_a_running_batch_gets_the_same_greedy_tokens_as_alone(engine):
    tok = engine.tokenizer
    late = tok.encode(PROMPTS[2] * 3)  # long enough to be prefilled in chunks while others decode
    expected = alone(engine, late, greedy(24))
    for i in range(3):
        engine.add_request(f"early{i}", tok.encode(PROMPTS[i]), greedy(40))
    first = [o for _ in range(5) for o in engine.step()]
    engine.add_request("late", late, greedy(24))
    outs = run_all(engine)
    for o in reversed(first):
        outs[o.request_id].insert(0, o)
    assert tokens_of(outs["late"]) == expected
    for i in range(3):
        assert tokens_of(outs[f"early{i}"]) == alone(engine, engine.tokenizer.encode(PROMPTS[i]), greedy(40))


def test_32_mixed_requests_all_finish_with_correct_lengths_and_reasons(engine):
    tok = engine.tokenizer
    want = {}
    for i in range(32):
        prompt = tok.encode(PROMPTS[i % len(PROMPTS)] * (1 + i % 3))
        n = 3 + (i * 7) % 20
        engine.add_request(f"m{i}", prompt, greedy(n, ignore_eos=True))
        want[f"m{i}"] = n
    outs = run_all(engine)
    assert set(outs) == set(want)
    for rid, n in want.items():
        f = final(outs[rid])
        assert f.finish_reason == "length"
        assert len(tokens_of(outs[rid])) == n == f.num_output_tokens
    assert engine.num_running == engine.num_waiting == 0
    assert engine.num_free_slots == 4


def test_max_model_len_ends_with_length(engine):
    tok = engine.tokenizer
    prompt = tok.encode("x = 1\n" * 20)[:120]
    engine.add_request("edge", prompt, SamplingParams(max_tokens=None, temperature=0.0, ignore_eos=True))
    outs = run_all(engine)["edge"]
    assert final(outs).finish_reason == "length"
    assert len(prompt) + len(tokens_of(outs)) == 128


def test_stop_token_ids_and_stop_strings(engine):
    tok = engine.tokenizer
    prompt = tok.encode(PROMPTS[0])
    base = alone(engine, prompt, greedy(20, ignore_eos=True))
    stop_tok = base[5]
    engine.add_request("st", prompt, greedy(20, ignore_eos=True, stop_token_ids=[stop_tok]))
    outs = run_all(engine)["st"]
    first = base.index(stop_tok)
    assert tokens_of(outs) == base[: first + 1]
    assert final(outs).finish_reason == "stop" and final(outs).stop_reason == stop_tok

    full_text = tok.decode(base, skip_special_tokens=True)
    stop_str = full_text[len(full_text) // 2: len(full_text) // 2 + 3]
    engine.add_request("ss", prompt, greedy(20, ignore_eos=True, stop=[stop_str]))
    outs = run_all(engine)["ss"]
    assert final(outs).finish_reason == "stop" and final(outs).stop_reason == stop_str
    assert text_of(outs) == full_text[: full_text.index(stop_str)]


def test_min_tokens_suppresses_eos(engine):
    tok = engine.tokenizer
    prompt = tok.encode(PROMPTS[1])
    eos = tok.eos_token_id
    # Force EOS with logit_bias, then require 6 tokens first.
    engine.add_request("eos", prompt, greedy(20, logit_bias={eos: 100.0}))
    assert len(tokens_of(run_all(engine)["eos"])) == 1
    engine.add_request("min", prompt, greedy(20, logit_bias={eos: 100.0}, min_tokens=6))
    outs = run_all(engine)["min"]
    assert len(tokens_of(outs)) == 7 and final(outs).finish_reason == "stop"


def test_seeded_sampling_repeats_and_n_choices_differ(engine):
    tok = engine.tokenizer
    p = SamplingParams(max_tokens=12, temperature=1.0, seed=1234, n=2, ignore_eos=True)
    engine.add_request("s1", tok.encode(PROMPTS[3]), p)
    engine.add_request("noise", tok.encode(PROMPTS[4]), SamplingParams(max_tokens=12, temperature=1.0))
    a = run_all(engine)["s1"]
    engine.add_request("s2", tok.encode(PROMPTS[3]), p)
    b = run_all(engine)["s2"]
    assert tokens_of(a, 0) == tokens_of(b, 0) and tokens_of(a, 1) == tokens_of(b, 1)
    assert tokens_of(a, 0) != tokens_of(a, 1)


def test_logprobs_are_returned_per_token(engine):
    tok = engine.tokenizer
    engine.add_request("lp", tok.encode(PROMPTS[0]), greedy(5, logprobs=3))
    outs = run_all(engine)["lp"]
    lps = [lp for o in outs for lp in (o.logprobs or [])]
    assert [lp.token_id for lp in lps] == tokens_of(outs)
    for lp in lps:
        assert len(lp.top) == 3 and lp.top[0].token_id == lp.token_id  # greedy picks the most likely token
        assert lp.logprob <= 0.0


def test_abort_frees_the_slot_and_reports_abort(engine):
    tok = engine.tokenizer
    engine.add_request("ab", tok.encode(PROMPTS[0]), greedy(100, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.num_running == 1
    engine.abort("ab")
    outs = run_all(engine)["ab"]
    assert final(outs).finish_reason == "abort"
    assert engine.num_running == 0 and engine.num_free_slots == 4


def test_queue_full_is_a_typed_error(tiny_pair):
    eng = make_engine(tiny_pair[0], max_num_seqs=2, max_queue=1, max_num_batched_tokens=16, max_model_len=64)
    ids = eng.tokenizer.encode("hello")
    for i in range(3):
        eng.add_request(f"q{i}", ids, greedy(4))
    with pytest.raises(QueueFullError):
        eng.add_request("q3", ids, greedy(4))
    with pytest.raises(QueueFullError):
        eng.add_request("n2", ids, SamplingParams(n=2, max_tokens=4))
    run_all(eng)
    eng.add_request("after", ids, greedy(4))  # capacity comes back


@pytest.mark.parametrize(
    "prompt, params, err, field",
    [
        ([], greedy(), InvalidRequestError, "prompt"),
        ([10**6], greedy(), InvalidRequestError, "prompt"),
        ([5] * 128, greedy(), PromptTooLongError, "prompt"),
        ([5] * 100, greedy(64), PromptTooLongError, "max_tokens"),
        ([5], SamplingParams(logit_bias={10**6: 1.0}), InvalidRequestError, "logit_bias"),
        ([5], SamplingParams(n=0), InvalidRequestError, "n"),
        ([5], SamplingParams(n=99), InvalidRequestError, "n"),
        ([5], SamplingParams(logprobs=50), InvalidRequestError, "logprobs"),
        ([5], SamplingParams(n=9), InvalidRequestError, "n"),  # settings.server.max_n (8) is the engine's bound
        ([5], SamplingParams(temperature=float("nan")), InvalidRequestError, "temperature"),
        ([5], SamplingParams(temperature=-1.0), InvalidRequestError, "temperature"),
        ([5], SamplingParams(top_p=0.0), InvalidRequestError, "top_p"),
        ([5], SamplingParams(max_tokens=0), InvalidRequestError, "max_tokens"),
        ([5], SamplingParams(min_tokens=9, max_tokens=4), InvalidRequestError, "min_tokens"),
        ([5], SamplingParams(stop=[""]), InvalidRequestError, "stop"),
    ],
)
def test_bad_input_raises_typed_errors_naming_the_field(engine, prompt, params, err, field):
    with pytest.raises(err) as info:
        engine.add_request("bad", prompt, params)
    assert info.value.field == field and info.value.param == field  # the server renames `param` per endpoint
    assert info.value.message
    assert engine.num_waiting == 0


def test_runner_admission_hook_is_consulted(engine, monkeypatch):
    """Backends state their own limits (Neuron: largest compiled bucket, fused-mode sampling) through check_request."""
    def refuse(prompt_ids, params):
        if params.temperature > 0:
            raise InvalidRequestError("this backend samples greedily on device", field="temperature")

    monkeypatch.setattr(engine.runner, "check_request", refuse, raising=False)
    with pytest.raises(InvalidRequestError, match="greedily"):
        engine.add_request("hook", [5, 6], SamplingParams(temperature=0.7))
    engine.add_request("ok", [5, 6], greedy(2))
    assert final(run_all(engine)["ok"]).finish_reason in ("length", "stop")
