"""What each attention head of a checkpoint looks at, on real traces (docs/cwm-mini.md, "Copying").

    .venv/bin/python scripts/attention_heads.py [MODEL_DIR] [--data runs/mini/data/heldout] [--traces 12]

For each layer and head, the mean attention weight (over every query of the first `--traces`
traces, up to 1,024 tokens each) on: the query's own token (`self`), the token just before it
(`prev`: a previous-token head puts ~1 here), and, for queries whose token occurred earlier, on
the tokens that followed its earlier occurrences (`ind`: an induction head, the half of a copy
that predicts what came next last time, puts ~1 here). A copy needs both kinds.
"""

from __future__ import annotations

import argparse

import torch

from cwm.data.dataset import row_to_trace, rows
from cwm.model import load_pretrained
from cwm.model.attention import attention_mask, plan_attention
from cwm.model.rope import apply_rope, rope_table
from cwm.models import default_model
from cwm.tokenizer import load_tokenizer
from cwm.tokenizer.prompts import trace_frames_ids, trace_prompt_ids


def head_stats(model, ids: list[int]) -> torch.Tensor:
    """[layers, heads, 3]: mean attention on self, previous token, induction targets."""
    T = len(ids)
    t, positions = torch.tensor(ids), torch.arange(T)
    # query i -> the keys j <= i whose previous token is the query's token
    follows = torch.nn.functional.pad(t[None, :-1] == t[:, None], (1, 0)) & (positions[None] <= positions[:, None])
    has = follows.any(1)
    x = model.embed_tokens(torch.tensor([ids]))
    rope = rope_table(positions, model.inv_freq, x.dtype)
    out = torch.zeros(len(model.layers), model.cfg.n_heads, 3)
    for layer, block in enumerate(model.layers):
        attn = block.self_attn
        H, K, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
        qkv = attn.qkv_proj(block.input_layernorm(x)).view(1, T, H + 2 * K, D)
        qk = apply_rope(qkv[:, :, : H + K], *rope)[0]
        q, k = qk[:, :H].transpose(0, 1), qk[:, H:].transpose(0, 1).repeat_interleave(H // K, 0)
        scores = (q @ k.transpose(1, 2)) / D**0.5
        p = scores.masked_fill(~attention_mask(positions, positions, block.window), float("-inf")).softmax(-1)
        out[layer, :, 0] = p.diagonal(dim1=1, dim2=2).mean(1)
        out[layer, :, 1] = p.diagonal(-1, dim1=1, dim2=2).mean(1)
        out[layer, :, 2] = (p * follows).sum(-1)[:, has].mean(1)
        x = block(x, rope, plan_attention(T, block.window))
    return out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default=None, help="checkpoint directory (default: the shipped cwm-mini)")
    parser.add_argument("--data", default="runs/mini/data/heldout")
    parser.add_argument("--traces", type=int, default=12)
    args = parser.parse_args()
    path = args.model or default_model()
    model, tok = load_pretrained(path).eval(), load_tokenizer(path)
    stats, n = None, 0
    for row in rows(args.data, kind="traces"):
        if n == args.traces:
            break
        trace = row_to_trace(row)
        ids = trace_prompt_ids(tok, trace) + [t for frame in trace_frames_ids(tok, trace) for t in frame]
        s = head_stats(model, ids[:1024])
        stats = s if stats is None else stats + s
        n += 1
    assert stats is not None, f"no traces in {args.data}"
    stats /= n
    for layer, block in enumerate(model.layers):
        cells = "  ".join(f"h{h}: self {stats[layer, h, 0]:.2f} prev {stats[layer, h, 1]:.2f} ind {stats[layer, h, 2]:.2f}"
                          for h in range(model.cfg.n_heads))
        print(f"layer {layer} (window {block.window}): {cells}")


if __name__ == "__main__":
    main()
