"""The oracle backend: a Backend that answers from a known trace instead of a model.

It holds a trace's prompt as token ids (the context, then one id list per frame). Given a
prompt, it finds how far the prompt has come through the trace and continues the trace's own
tokens from there, up to a stop token, exactly as a perfect model would. Built from the real
trace it scores 1.0 on every metric; built from a deliberately perturbed trace (a wrong local,
a skipped step, a malformed frame) it scores the hand-countable lower values, which is how the
metrics are tested.

Positioning follows the prompt's frames by event: a prompt frame that forces a return where the
trace has a call (the debugger's `next`) skips the callee's body to its return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cwm.backends import BackendError, Completion, Sampling, encode_prompt, split_stops
from cwm.eval.metrics import follow_real
from cwm.trace.format import END_OF_TEXT, EVENT_SEP, FRAME_SEP, Frame

if TYPE_CHECKING:
    from cwm.tokenizer import Tokenizer


@dataclass
class OracleBackend:
    tokenizer: Tokenizer
    context_ids: list[int]  # <|begin_of_text|><|trace_context_start|>SOURCE<|frame_sep|>
    frame_ids: list[list[int]]  # each frame's ids, ending with <|frame_sep|>
    frames: list[Frame]  # the same frames, for their events and depths

    def __post_init__(self):
        tok = self.tokenizer
        self.frame_sep = tok.special_id(FRAME_SEP)
        self.end_ids = [tok.special_id(END_OF_TEXT)]
        self.event_of_id = {tok.special_id(sep): e for e, sep in EVENT_SEP.items()}

    @classmethod
    def from_trace(cls, tokenizer, source: str, frames: list[Frame]) -> "OracleBackend":
        from cwm.tokenizer.tracetext import context_ids, frames_ids

        return cls(tokenizer, context_ids(tokenizer, source), frames_ids(tokenizer, source, frames), list(frames))

    def _stream(self, prompt: list[int]) -> list[int]:
        n = len(self.context_ids)
        if prompt[:n] != self.context_ids:
            raise BackendError("the oracle only answers prompts that start with its trace's context")
        pieces, current = [], []
        for t in prompt[n:]:
            current.append(t)
            if t == self.frame_sep:
                pieces.append(current)
                current = []
        # `current` is a forced start of the next frame (such as <|return_sep|>), or empty.
        events = [self.event_of_id.get(p[0]) for p in pieces] + [self.event_of_id.get(current[0]) if current else None]
        r = follow_real(self.frames, events)[-1]
        if r >= len(self.frames):
            return list(self.end_ids)
        rest = [t for ids in self.frame_ids[r + 1:] for t in ids]
        return self.frame_ids[r][len(current):] + rest + self.end_ids

    def complete(self, prompt, stop=(), sampling=Sampling()) -> Completion:
        ids = encode_prompt(self.tokenizer, prompt)
        stop_ids, strings = split_stops(self.tokenizer, stop)
        stream = self._stream(ids)
        end = next((i + 1 for i, t in enumerate(stream) if t in stop_ids), len(stream))
        tokens = stream[:min(end, sampling.max_new_tokens)]
        cut = cut_at_stop_string(self.tokenizer, tokens, strings)
        tokens = cut if cut is not None else tokens
        stopped = cut is not None or (bool(tokens) and tokens[-1] in stop_ids)
        return Completion(tokens, self.tokenizer.decode(tokens), "stop" if stopped else "length", len(ids))


@dataclass
class OracleSet:
    """Several oracles behind one backend: each prompt goes to the trace whose context it starts with."""

    tokenizer: Tokenizer
    oracles: list[OracleBackend]

    def complete(self, prompt, stop=(), sampling=Sampling()) -> Completion:
        ids = encode_prompt(self.tokenizer, prompt)
        for oracle in self.oracles:
            if ids[: len(oracle.context_ids)] == oracle.context_ids:
                return oracle.complete(ids, stop, sampling)
        raise BackendError("no trace of this oracle matches the prompt's context")


def cut_at_stop_string(tokenizer, tokens: list[int], strings: list[str]) -> list[int] | None:
    """The shortest prefix of `tokens` whose text contains a stop string, or None."""
    if not strings or not any(s in tokenizer.decode(tokens) for s in strings):
        return None
    for end in range(1, len(tokens) + 1):
        if any(s in tokenizer.decode(tokens[:end]) for s in strings):
            return tokens[:end]
    return tokens
