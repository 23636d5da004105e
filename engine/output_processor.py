"""The output stage: stop checks, incremental detokenization and `RequestOutput` assembly.

Per emitted token (`check_token`, called by `Scheduler.update` right after the token is appended) it buffers the token
for the next output, decodes it, and says whether the sequence stops there: a stop token (EOS unless ignore_eos, or
`stop_token_ids`), a stop string (matched across token boundaries by `IncrementalDetokenizer`), or the length limit.
`collect` then turns every sequence with something new into one `RequestOutput` delta; a finished sequence reports its
end exactly once, with the text its detokenizer still held back.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import RequestOutput
from engine.select import Selection
from engine.sequence import Finish, Sequence
from engine.stats import EngineCounters


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_ids: Seq[int], counters: EngineCounters):
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.counters = counters  # finish reasons are counted as each sequence's final output goes out
        self._detok: dict[Sequence, IncrementalDetokenizer] = {}

    @property
    def num_open(self) -> int:
        """Sequences whose final output has not been collected (each holds a detokenizer)."""
        return len(self._detok)

    def add(self, seq: Sequence) -> None:
        self._detok[seq] = IncrementalDetokenizer(self.tokenizer, seq.prompt_ids, seq.params.stop)

    def check_token(self, seq: Sequence, sel: Selection, j: int, *, now: float) -> Finish | None:
        """Token j of `sel` was just appended to `seq.output_ids`: buffer it, decode it, and stop there if due."""
        tok = sel.token_ids[j]
        seq.new_token_ids.append(tok)
        seq.new_token_times.append(now)
        if sel.logprobs is not None:
            seq.new_logprobs.append(sel.logprobs[j])
        if seq.first_token_time is None:
            seq.first_token_time = now
        n_out = len(seq.output_ids)
        may_stop = n_out >= seq.params.min_tokens
        try:
            stop_str = self._detok[seq].add_token(tok, check_stop=may_stop)
        except Exception as e:
            return Finish("error", error=f"detokenization failed: {type(e).__name__}: {e}")
        if tok in seq.stop_token_ids and may_stop:
            return Finish("stop", None if tok in self.eos_token_ids else tok)
        if stop_str is not None:
            return Finish("stop", stop_str)
        if seq.num_tokens >= seq.max_total_len:
            return Finish("length")
        return None

    def collect(self, seqs: list[Sequence]) -> list[RequestOutput]:
        """One output per sequence with something new (duplicates in `seqs` count once, order kept)."""
        out = []
        for seq in dict.fromkeys(seqs):
            if seq.final_sent:
                continue
            self._take_text(seq)
            if seq.new_token_ids or seq.new_text or seq.is_finished:
                out.append(self._output(seq))
                seq.final_sent = seq.is_finished
                if seq.is_finished:
                    self.counters.count_finish(seq.finish_reason)
        return out

    def _take_text(self, seq: Sequence) -> None:
        """Move the text that may go out now into the sequence's delta: all of it once finished (but none after an
        error), else all but the tail a stop string could still start in."""
        if not seq.is_finished:
            detok = self._detok.get(seq)
            if detok is not None:
                seq.new_text += detok.take_delta(final=False)
            return
        detok = self._detok.pop(seq, None)
        if detok is not None and seq.finish_reason != "error":
            seq.new_text += detok.take_delta(final=True)

    @staticmethod
    def _output(seq: Sequence) -> RequestOutput:
        ids, text, lps, times = seq.take_delta()
        return RequestOutput(
            request_id=seq.request_id, index=seq.index, token_ids=ids, text=text,
            logprobs=lps if seq.params.logprobs is not None else None, finished=seq.is_finished,
            finish_reason=seq.finish_reason, stop_reason=seq.stop_reason, error=seq.error,
            num_prompt_tokens=len(seq.prompt_ids), num_output_tokens=len(seq.output_ids), token_times=times,
            spec=seq.spec, arrival_time=seq.arrival_time, first_scheduled_time=seq.first_scheduled_time,
            first_token_time=seq.first_token_time,
        )
