"""`cwm model info`: the size, attention pattern and memory of a preset or a checkpoint, without
allocating its weights."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="action", required=True, metavar="{info}")
    info = verbs.add_parser("info", help="parameters, per-layer attention pattern, weight and KV-cache memory")
    source = info.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="a preset name: cwm-32b, cwm-tiny, cwm-small")
    source.add_argument("--model", metavar="DIR", help="a Hugging Face layout checkpoint directory")
    info.add_argument("--context", type=int, default=None, help="tokens for the KV-cache figure (default: max_seq_len)")
    info.add_argument("--batch-size", type=int, default=1, help="sequences for the KV-cache figure")
    info.add_argument(
        "--global-rule", choices=["meta", "hf"], default=None,
        help="with --preset: Meta's global layers (every 4th and the last) or transformers' default (every 4th)",
    )


def run(args) -> int:
    from cwm.model.checkpoint import read_config
    from cwm.model.config import get_preset

    try:
        if args.preset:
            cfg = get_preset(args.preset, **({"global_rule": args.global_rule} if args.global_rule else {}))
        else:
            cfg = read_config(args.model)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(info_text(cfg, args.context, args.batch_size))
    return 0


def info_text(cfg, context: int | None = None, batch_size: int = 1) -> str:
    import torch

    from cwm.model.config import FULL, format_bytes
    from cwm.model.transformer import Transformer

    with torch.device("meta"):  # real module, no memory: the count is the module's own
        params = sum(p.numel() for p in Transformer(cfg).parameters())
    context = context or cfg.max_seq_len
    kv_bytes = cfg.kv_cache_bytes(context, batch_size)
    all_global_bytes = 2 * 2 * cfg.n_kv_heads * cfg.head_dim * cfg.n_layers * context * batch_size  # k and v, bf16
    types = cfg.attention_types()
    pattern = "".join("G" if t == FULL else "S" for t in types)
    globals_ = [i for i, t in enumerate(types) if t == FULL]
    lines = [
        f"layers: {cfg.n_layers}  d_model: {cfg.dim}  heads: {cfg.n_heads} query / {cfg.n_kv_heads} kv x {cfg.head_dim}"
        f"  ffn: {cfg.ffn_dim}  vocab: {cfg.vocab_size}  max_seq_len: {cfg.max_seq_len}",
        f"attention: {pattern}  (G global, S sliding window of {cfg.sliding_window} tokens)",
        f"global layers ({len(globals_)}): {', '.join(map(str, globals_))}",
        f"rope: theta {cfg.rope_theta:g}" + (
            f", llama3 scaling factor {cfg.rope_factor:g} (low {cfg.rope_low_freq_factor:g}, high "
            f"{cfg.rope_high_freq_factor:g}, original context {cfg.rope_original_max_seq_len})"
            if cfg.rope_factor else ""
        ),
        f"weights (bf16): {format_bytes(2 * params)}",
        f"kv cache (bf16, {context} tokens, batch {batch_size}): {format_bytes(kv_bytes)}"
        f"  (all layers global: {format_bytes(all_global_bytes)})",
        f"training FLOPs per token at {context} tokens: {cfg.flops_per_token(context):.4g}",
        f"params: {params}",
    ]
    return "\n".join(lines)
