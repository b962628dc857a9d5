"""Sampling from a `Transformer`, as gpt-fast does it: prefill the prompts in one pass, then
decode one token at a time at a fixed shape (so the step can be compiled), reading the chosen
tokens back to the host only every `check_every` steps to look for stops.

    prefill(model, tokens, positions, cache)   -> logits of the last position
    decode_one(model, token, position, cache)  -> logits of the next position
    generate(model, prompts, ...)              -> the new tokens of each prompt
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch

from cwm.model.cache import KVCache
from cwm.model.transformer import Transformer, decode_layout


def sample(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, generator=None) -> torch.Tensor:
    """logits [B, vocab] -> token ids [B]. temperature 0 is greedy; top_p < 1 keeps the smallest
    set of most likely tokens whose probability reaches top_p (nucleus sampling)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
        sorted_probs[before >= top_p] = 0.0  # the most likely token always stays
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, choice)[:, 0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def constrain(logits: torch.Tensor, allowed: list[Sequence[int] | None]) -> torch.Tensor:
    """logits [B, vocab] with every id outside a row's `allowed` set to -inf (None: row unchanged)."""
    if all(ids is None for ids in allowed):
        return logits
    mask = torch.zeros_like(logits)
    for row, ids in enumerate(allowed):
        if ids is not None:
            mask[row].fill_(float("-inf"))
            mask[row, list(ids)] = 0.0
    return logits + mask


def prefill(model: Transformer, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
            doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Write tokens [B, T] at positions [T] into the cache; the logits after the last, [B, vocab]."""
    return model(tokens, doc_ids, positions=positions, cache=cache, last_only=True)[:, -1]


def decode_one(model: Transformer, token: torch.Tensor, position: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One token per row, token [B, 1] at position [1] (a device tensor): the next logits [B, vocab]."""
    return model(token, positions=position, cache=cache)[:, -1]


_compiled_decode_one = None


def compiled_decode_one():
    """`decode_one` under torch.compile (compiled on first use for each model and cache shape:
    ~1 min on a CPU, so it is for long runs and benchmarks; see docs/model.md, Speed)."""
    global _compiled_decode_one
    if _compiled_decode_one is None:
        _compiled_decode_one = torch.compile(decode_one, fullgraph=True, dynamic=False)
    return _compiled_decode_one


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.inference_mode()
def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]] | Sequence[int],
    max_new_tokens: int = 256,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_tokens: Sequence[int] | None = None,
    stop_strings: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    on_token: Callable[[int, int], None] | None = None,
    seed: int | None = None,
    cache: KVCache | None = None,
    compile: bool = False,
    check_every: int | None = None,
    allowed: Callable[[list[int]], Sequence[int] | None] | None = None,
) -> list:
    """Continue each prompt (a list of token ids, or a list of such lists for a batch).

    Returns the new tokens of each prompt; a row ends after `max_new_tokens`, with a stop token,
    or with the token whose text completes one of `stop_strings` (`decode` turns ids into text);
    that last token is included (so the caller sees why it stopped). stop_tokens defaults to the
    model's eos_token_ids; pass () for none. on_token(row, token) is called for each token kept,
    in order; an exception it raises ends the generation and propagates.
    Prompts of different lengths are left-padded; the padding is a separate document, so it
    changes nothing (RoPE sees only relative positions).

    cache: a KVCache of batch 1 kept between calls (prefix reuse): the prompt's tokens it already
    holds are not computed again, only the rest. compile: decode with `compiled_decode_one`.
    allowed(tokens) -> ids or None: constrained decoding; given a row's new tokens so far, the
    ids it may take next (None: any). It reads every token, so it makes check_every 1.
    check_every: steps between looks at the chosen tokens (each a host sync); 1 on CPU, where it
    costs nothing, 8 elsewhere. Rows decode up to check_every - 1 tokens past their stop, which
    are dropped: the result does not depend on it.
    """
    single = len(prompts) > 0 and isinstance(prompts[0], int)
    batch = [list(cast(Sequence[int], prompts))] if single else [list(p) for p in cast(Sequence[Sequence[int]], prompts)]
    if not batch or any(len(p) == 0 for p in batch):
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    if stop_strings and decode is None:
        raise ValueError("stop_strings need `decode` (token ids -> text)")
    cfg = model.cfg
    longest = max(map(len, batch))
    if longest + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"context of {cfg.max_seq_len} tokens"
        )
    stops = set(cfg.eos_token_ids if stop_tokens is None else stop_tokens)
    tail = max((len(s) for s in stop_strings), default=0) + 4  # tokens that can hold a stop string
    param = next(model.parameters())
    device = param.device
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    check_every = 1 if allowed is not None else check_every or (1 if device.type == "cpu" else 8)
    step_fn = compiled_decode_one() if compile else decode_one

    start = 0
    if cache is None:
        cache = KVCache(cfg, len(batch), longest + max_new_tokens, device=device, dtype=param.dtype)
    else:
        if len(batch) != 1 or cache.batch_size != 1:
            raise ValueError("a kept KV cache (prefix reuse) serves one prompt at a time")
        if cache.max_len < longest + max_new_tokens:
            raise ValueError(f"the KV cache holds {cache.max_len} tokens; {longest + max_new_tokens} are needed")
        start = min(common_prefix(cache.ids, batch[0]), longest - 1)  # the last prompt token gives the logits
        if start and not cache.truncate(start):
            start = 0
        cache.reused = start
    tokens = torch.tensor([[0] * (longest - len(p)) + p[start:] for p in batch], device=device)
    doc_ids = None
    if any(len(p) < longest for p in batch):  # left padding: a document of its own
        doc_ids = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch], device=device)
    cache.ids = batch[0][:start] if len(batch) == 1 else []

    outputs: list[list[int]] = [[] for _ in batch]
    running = set(range(len(batch)))
    chosen = torch.empty(len(batch), max_new_tokens, dtype=torch.long, device=device)
    with decode_layout(model):
        logits = prefill(model, tokens, torch.arange(start, longest, device=device), cache, doc_ids)
        cache.ids = batch[0] if len(batch) == 1 else []
        position = torch.tensor([longest], device=device)
        read = 0  # chosen tokens read back so far
        for step in range(max_new_tokens):
            if allowed is not None:
                logits = constrain(logits, [allowed(outputs[row]) if row in running else None for row in range(len(batch))])
            next_tokens = sample(logits, temperature, top_p, generator)
            chosen[:, step] = next_tokens
            if step + 1 - read == check_every or step == max_new_tokens - 1:
                for row, new in enumerate(chosen[:, read : step + 1].tolist()):
                    for token in new:
                        if row not in running:
                            break
                        outputs[row].append(token)
                        if token in stops or (stop_strings and decode is not None and any(s in decode(outputs[row][-tail:]) for s in stop_strings)):
                            running.discard(row)
                        if on_token is not None:
                            on_token(row, token)
                read = step + 1
                if not running:
                    break
            if step == max_new_tokens - 1:
                break
            # Finished rows keep decoding (one batch, one shape); their tokens are dropped.
            logits = step_fn(model, next_tokens[:, None], position, cache)
            position += 1
    if len(batch) == 1:
        cache.ids = batch[0] + chosen[0, : read - 1].tolist()  # every token fed so far
    return outputs[0] if single else outputs
