"""Prefix reuse in the local backend: the debugger's step-by-step requests share a growing prefix,
and the kept KV cache computes only the new tokens, with exactly the frames of a fresh cache."""

from cwm.backends import LocalBackend
from cwm.debugger.session import Session
from cwm.models import default_model


def test_reuse_predicts_the_same_frames_computing_only_new_tokens(prepared):
    off = LocalBackend.from_dir(default_model())  # the shipped model: real frames, not noise
    off.reuse_prefix = False
    on = LocalBackend(model=off.model, tokenizer=off.tokenizer)
    context, real = prepared
    fresh, kept = Session(off, context, real=real), Session(on, context, real=real)
    for command in ["step"] * 4 + ["back", "back", "step", "next", "step", "reset", "step"]:
        if fresh.current.error and command not in ("back", "reset"):
            command = "back"  # the small model wrote a malformed frame (the same in both): drop it
        before = len(kept.prompt())
        getattr(fresh, command)()
        getattr(kept, command)()
        assert [(s.ids, s.error) for s in kept.steps] == [(s.ids, s.error) for s in fresh.steps]
        if command == "step" and len(kept.steps) > 2:  # the last request's prompt and answer are held:
            assert on._cache.reused >= before - 1  # all but the last token (+ a forced one) is reused
    assert sum(s.frame is not None for s in kept.steps) >= 2 and off._cache is None
