"""Sampling from a `Transformer`: prefill the prompts in one pass, then decode token by token."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


@torch.inference_mode()
def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]] | Sequence[int],
    max_new_tokens: int = 256,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_tokens: Sequence[int] | None = None,
    on_token: Callable[[int, int], None] | None = None,
    seed: int | None = None,
) -> list[list[int]] | list[int]:
    """Continue each prompt (a list of token ids, or a list of such lists for a batch).

    Returns the new tokens of each prompt; a row ends after `max_new_tokens` or with a stop token,
    which is included (so the caller sees why it stopped). stop_tokens defaults to the model's
    eos_token_ids; pass () for none. on_token(row, token) is called as each token is chosen.
    Prompts of different lengths are left-padded; the padding is a separate document, so it
    changes nothing (RoPE sees only relative positions).
    """
    single = len(prompts) > 0 and isinstance(prompts[0], int)
    batch = [list(prompts)] if single else [list(p) for p in prompts]
    if not batch or any(len(p) == 0 for p in batch):
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    cfg = model.cfg
    longest = max(map(len, batch))
    if longest + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"context of {cfg.max_seq_len} tokens"
        )
    stops = set(cfg.eos_token_ids if stop_tokens is None else stop_tokens)
    param = next(model.parameters())
    generator = torch.Generator(param.device).manual_seed(seed) if seed is not None else None

    tokens = torch.tensor([[0] * (longest - len(p)) + p for p in batch], device=param.device)
    doc_ids = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch], device=param.device)
    cache = KVCache(cfg, len(batch), longest + max_new_tokens, device=param.device, dtype=param.dtype)
    outputs: list[list[int]] = [[] for _ in batch]
    running = list(range(len(batch)))
    with decode_layout(model):
        logits = model(tokens, doc_ids, cache=cache, last_only=True)[:, -1]
        for step in range(max_new_tokens):
            next_tokens = sample(logits, temperature, top_p, generator)
            chosen = next_tokens.tolist()
            for row in running:
                outputs[row].append(chosen[row])
                if on_token is not None:
                    on_token(row, chosen[row])
            running = [row for row in running if chosen[row] not in stops]
            if not running or step == max_new_tokens - 1:
                break
            # Finished rows keep decoding (one batch, one shape); their tokens are ignored.
            logits = model(next_tokens[:, None], cache=cache)[:, -1]
    return outputs[0] if single else outputs
