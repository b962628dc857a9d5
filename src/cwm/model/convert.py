"""Meta's own checkpoint layout <-> the Hugging Face layout.

Meta layout: `params.json` (the model arguments, flat as in Llama releases or under "model" as in
facebookresearch/cwm) and weights in `consolidated.00.pth` or a torch.distributed.checkpoint
(DCP) directory, with names `tok_embeddings`, `layers.N.attention.{wq,wk,wv,wo}`,
`feed_forward.{w1,w2,w3}`, `attention_norm`, `ffn_norm`, `norm`, `output`. Meta applies RoPE to
interleaved pairs (x0, x1), (x2, x3), ...; HF rotates halves (x_i, x_{i+d/2}). The same rotation
with the rows of wq/wk reordered: within each head, HF row j < d/2 is Meta row 2j and HF row
d/2 + j is Meta row 2j + 1 (the standard Llama conversion).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from cwm.model.checkpoint import (
    CheckpointError,
    from_hf_state_dict,
    hf_shapes,
    model_from_state_dict,
    save_pretrained,
    to_hf_state_dict,
)
from cwm.model.config import FULL, SLIDING, ModelConfig, get_preset
from cwm.model.transformer import Transformer

# Meta name (after "layers.N.") -> HF name (after "model.layers.N.")
_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def meta_to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder wq/wk rows from Meta's interleaved RoPE pairs to HF's rotated halves."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_to_meta_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `meta_to_hf_rows`."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_names(cfg: ModelConfig) -> dict[str, str]:
    """Every Meta tensor name of a model with this config -> its HF name."""
    names = dict(_TOP_NAMES)
    for i in range(cfg.n_layers):
        names |= {f"layers.{i}.{meta}": f"model.layers.{i}.{hf}" for meta, hf in _LAYER_NAMES.items()}
    return names


def _meta_layer_types(n_layers: int, window_pattern: int, global_last_layer: bool) -> tuple[str, ...]:
    """Meta's rule (cwm/model/transformer.py): global when i % window_pattern == 0, or the last layer."""
    last = n_layers - 1
    return tuple(
        FULL if i % window_pattern == 0 or (global_last_layer and i == last) else SLIDING for i in range(n_layers)
    )


def config_from_params(params: dict, ffn_dim: int, source: str = "params.json") -> ModelConfig:
    """A ModelConfig from Meta's model arguments; the FFN size is read from the weights."""
    p = params.get("model", params)
    try:
        n_heads = p["n_heads"]
        window = p.get("window_attn") or {}
        context = p.get("max_seq_len", 131072)
        global_window = window.get("global_window")
        # A global window that covers the whole context is full attention (the release writes it so).
        if global_window is not None and not (isinstance(global_window, int) and global_window >= context):
            raise CheckpointError(
                f"{source}: window_attn.global_window is {global_window!r}, less than the context "
                f"(max_seq_len {context}): global layers with a window are not supported; only a "
                f"global_window >= max_seq_len (full attention) converts"
            )
        local = window.get("local_window")
        layer_types = None
        if local is not None:
            pattern, global_last = window.get("window_pattern", 6), window.get("global_last_layer", True)
            layer_types = _meta_layer_types(p["n_layers"], pattern, global_last)
        scaled = p.get("pos_embed_impl") == "scaled_rope" or p.get("use_scaled_rope", False)
        rope = p.get("scaled_rope") or {}
        return ModelConfig(
            vocab_size=p["vocab_size"],
            dim=p["dim"],
            n_layers=p["n_layers"],
            n_heads=n_heads,
            n_kv_heads=p.get("n_kv_heads") or n_heads,
            head_dim=p.get("head_dim") or p["dim"] // n_heads,
            ffn_dim=ffn_dim,
            norm_eps=p.get("norm_eps", 1e-5),
            max_seq_len=context,
            sliding_window=local,
            layer_types=layer_types,
            rope_theta=float(p.get("rope_theta", 10_000.0)),
            rope_factor=float(rope.get("scale_factor", 8)) if scaled else None,
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4)),
            rope_original_max_seq_len=int(rope.get("old_context_len", 8192)),
            # params.json has no special ids: the release's for its vocabulary, else the small BPE's.
            bos_token_id=(specials := get_preset("cwm-32b" if p["vocab_size"] == 128256 else "cwm-tiny")).bos_token_id,
            eos_token_ids=specials.eos_token_ids,
        )
    except KeyError as missing:
        raise CheckpointError(f"{source}: missing model argument {missing}") from None


def load_meta_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Meta weights from `consolidated.00.pth` or a DCP directory; returns (tensors, file read)."""
    consolidated = sorted(path.glob("consolidated.*.pth"))
    if len(consolidated) > 1:
        raise CheckpointError(
            f"{path}: {len(consolidated)} consolidated.*.pth files (model-parallel shards); "
            "merge them into one consolidated.00.pth first"
        )
    if consolidated:
        file = consolidated[0]
        try:
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # truncated or foreign: say which file
            raise CheckpointError(f"{file}: cannot be read as a PyTorch state dict ({e})") from None
    elif (path / ".metadata").is_file():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        file = path / ".metadata"
        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(path, Path(tmp) / "state.pth")
            state = torch.load(Path(tmp) / "state.pth", map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"{path}: no consolidated.00.pth and no DCP .metadata: no Meta-layout weights")
    if isinstance(state.get("model"), dict):  # facebookresearch/cwm's DCP state: {"model": {...}}
        state = state["model"]
    return {k.removeprefix("model."): v for k, v in state.items()}, str(file)


def convert_meta_to_hf(src: str | os.PathLike, out_dir: str | os.PathLike, max_shard_bytes: int = 5 * 1024**3) -> Path:
    """Convert a Meta-layout checkpoint directory into an HF-layout one (loadable by
    `load_pretrained` and by transformers' `CwmForCausalLM`)."""
    src = Path(src)
    params_file = src / "params.json"
    if not params_file.is_file():
        raise CheckpointError(f"{params_file} not found: {src} is not a Meta-layout checkpoint")
    try:
        params = json.loads(params_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{params_file} is not valid JSON: {e}") from None
    meta, file = load_meta_state_dict(src)
    w1 = "layers.0.feed_forward.w1.weight"
    if w1 not in meta:
        raise CheckpointError(f"{file}: tensor {w1!r} is missing")
    cfg = config_from_params(params, ffn_dim=meta[w1].shape[0], source=str(params_file))

    names, shapes = meta_names(cfg), hf_shapes(cfg)
    for name in meta:
        if name not in names and not name.endswith(("rope.freqs", "freqs_cis")):  # those are recomputed
            raise CheckpointError(f"{file}: unexpected tensor {name!r}: not part of a CWM model with this params.json")
    hf = {}
    for name, hf_name in names.items():
        if name not in meta:
            raise CheckpointError(f"{file}: tensor {name!r} is missing")
        if tuple(meta[name].shape) != shapes[hf_name]:
            raise CheckpointError(
                f"{file}: tensor {name!r} has shape {list(meta[name].shape)}, "
                f"{params_file.name} implies {list(shapes[hf_name])}"
            )
        hf[hf_name] = meta[name]
    for i in range(cfg.n_layers):
        q, k = f"model.layers.{i}.self_attn.q_proj.weight", f"model.layers.{i}.self_attn.k_proj.weight"
        hf[q] = meta_to_hf_rows(hf[q], cfg.n_heads)
        hf[k] = meta_to_hf_rows(hf[k], cfg.n_kv_heads)
    model = model_from_state_dict(cfg, from_hf_state_dict(cfg, hf), "cpu")
    return save_pretrained(model, out_dir, max_shard_bytes=max_shard_bytes)


def save_meta(model: Transformer, out_dir: str | os.PathLike) -> Path:
    """Write a model in Meta's layout (params.json as facebookresearch/cwm has it, and
    consolidated.00.pth): the inverse of `convert_meta_to_hf`."""
    cfg = model.cfg
    types = cfg.attention_types()
    global_last = types[-1] == FULL
    if SLIDING in types and _meta_layer_types(cfg.n_layers, 4, global_last) != types:
        raise ValueError(f"the layer pattern {types} is not one Meta's window_attn arguments can express")
    hf = to_hf_state_dict(model)
    meta = {name: hf[hf_name].clone() for name, hf_name in meta_names(cfg).items()}
    for i in range(cfg.n_layers):
        wq, wk = f"layers.{i}.attention.wq.weight", f"layers.{i}.attention.wk.weight"
        meta[wq], meta[wk] = hf_to_meta_rows(meta[wq], cfg.n_heads), hf_to_meta_rows(meta[wk], cfg.n_kv_heads)
    args: dict[str, Any] = {
        "dim": cfg.dim,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "norm_eps": cfg.norm_eps,
        "max_seq_len": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta,
        "pos_embed_impl": "scaled_rope" if cfg.rope_factor else "rope",
    }
    if cfg.rope_factor:
        args["scaled_rope"] = {
            "scale_factor": cfg.rope_factor,
            "old_context_len": cfg.rope_original_max_seq_len,
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
        }
    if SLIDING in types:
        args["window_attn"] = {
            "window_pattern": 4, "local_window": cfg.sliding_window, "global_last_layer": global_last
        }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "params.json").write_text(json.dumps({"model": args}, indent=2) + "\n")
    torch.save(meta, out_dir / "consolidated.00.pth")
    return out_dir
