"""Checkpoints in the Hugging Face layout: config.json + sharded safetensors + index.

The layout `transformers`' `CwmForCausalLM` reads and writes, and the one the released
`facebook/cwm` weights use. Our fused q/k/v and gate/up matrices are split into the HF tensors
on save and joined on load. Every problem with a checkpoint (missing shard, truncated file,
missing, unexpected or mis-shaped tensor) stops with one message naming the file and the tensor.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cwm.model.config import ModelConfig
from cwm.model.rope import rope_inv_freq
from cwm.model.transformer import Transformer

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the tensor."""


# --- names and shapes ----------------------------------------------------------------------------


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the HF layout with its shape, computed from the config alone."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.dim)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (cfg.dim,),
            p + "self_attn.q_proj.weight": (q, cfg.dim),
            p + "self_attn.k_proj.weight": (kv, cfg.dim),
            p + "self_attn.v_proj.weight": (kv, cfg.dim),
            p + "self_attn.o_proj.weight": (cfg.dim, q),
            p + "post_attention_layernorm.weight": (cfg.dim,),
            p + "mlp.gate_proj.weight": (cfg.ffn_dim, cfg.dim),
            p + "mlp.up_proj.weight": (cfg.ffn_dim, cfg.dim),
            p + "mlp.down_proj.weight": (cfg.dim, cfg.ffn_dim),
        }
    shapes |= {"model.norm.weight": (cfg.dim,), "lm_head.weight": (cfg.vocab_size, cfg.dim)}
    return shapes


_FUSED = {  # our fused parameter -> the HF tensors it is made of, in order
    "self_attn.qkv_proj.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our parameters under HF names, fused matrices split (views, no copies)."""
    cfg, out = model.cfg, {}
    for name, tensor in model.state_dict().items():
        if name.startswith("layers."):
            layer, _, rest = name[len("layers.") :].partition(".")
            prefix = f"model.layers.{layer}."
            if rest in _FUSED:
                for part, piece in zip(_FUSED[rest], tensor.split(_split_sizes(cfg, rest), dim=0)):
                    out[prefix + part] = piece
            else:
                out[prefix + rest] = tensor
        elif name == "lm_head.weight":
            out[name] = tensor
        else:
            out["model." + name] = tensor
    return out


def _split_sizes(cfg: ModelConfig, fused: str) -> list[int]:
    if fused == "self_attn.qkv_proj.weight":
        return [cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim]
    return [cfg.ffn_dim, cfg.ffn_dim]


def from_hf_state_dict(cfg: ModelConfig, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF tensors -> our state dict (fused matrices joined). `hf` must be complete (see `load_pretrained`)."""
    out = {}
    for name in hf_shapes(cfg):
        if name.startswith("model.layers."):
            layer, _, rest = name[len("model.layers.") :].partition(".")
            fused = next((f for f, parts in _FUSED.items() if rest == parts[0]), None)
            if fused is not None:
                parts = [hf[f"model.layers.{layer}.{part}"] for part in _FUSED[fused]]
                out[f"layers.{layer}.{fused}"] = torch.cat(parts, dim=0)
            elif not any(rest in parts for parts in _FUSED.values()):
                out[f"layers.{layer}.{rest}"] = hf[name]
        else:
            out[name.removeprefix("model.")] = hf[name]
    return out


# --- save ----------------------------------------------------------------------------------------


def save_pretrained(
    model: Transformer,
    out_dir: str | os.PathLike,
    max_shard_bytes: int = 5 * 1024**3,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write config.json, model-0000X-of-0000N.safetensors and model.safetensors.index.json.

    Built in a temporary sibling directory and renamed into place, so `out_dir` is never half
    written; other files already in `out_dir` (a tokenizer, say) are kept.
    """
    out_dir = Path(out_dir)
    tensors = {
        name: (t if dtype is None else t.to(dtype)).detach().contiguous().cpu()
        for name, t in to_hf_state_dict(model).items()
    }
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += size

    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, tmp / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, file)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    config = model.cfg.to_hf_dict() | {"dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch.")}
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for file in tmp.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())

    if out_dir.exists():  # keep files that are not ours (tokenizer, notes), replace the rest
        old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        for file in old.iterdir():
            ours = file.name in ("config.json", INDEX, SINGLE) or file.name.startswith("model-")
            if not ours:
                file.rename(tmp / file.name)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)
    return out_dir


# --- load ----------------------------------------------------------------------------------------


def read_config(path: str | os.PathLike) -> ModelConfig:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        hint = " (a Meta-layout checkpoint: convert it with `cwm convert`)" if (path / "params.json").exists() else ""
        raise CheckpointError(f"{config_file} not found: {path} is not a Hugging Face checkpoint directory{hint}")
    hf = _read_json(config_file)
    try:
        return ModelConfig.from_hf_dict(hf, source=str(config_file))
    except ValueError as e:
        raise CheckpointError(str(e)) from None


MAX_JSON_BYTES = 64 << 20  # config.json and the index are kilobytes; the 32B index is ~70 KB


def _read_json(file: Path):
    if file.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(f"{file}: {file.stat().st_size} bytes is far too large for this file; it is not a checkpoint's")
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{file} is not valid UTF-8 JSON: {e}") from None


MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on a header


def _header(file: Path) -> dict:
    """A safetensors header, after checking that every tensor's bytes are in the file."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else None
        if n is None or 8 + n > size:
            raise CheckpointError(f"{file}: truncated or not a safetensors file (its header is incomplete)")
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{file}: not a safetensors file (a header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise CheckpointError(f"{file}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    for name, info in header.items():
        if not (
            isinstance(info, dict) and isinstance(info.get("dtype"), str)
            and _ints(info.get("shape")) and _ints(info.get("data_offsets")) and len(info["data_offsets"]) == 2
            and 0 <= info["data_offsets"][0] <= info["data_offsets"][1]
        ):
            raise CheckpointError(
                f"{file}: damaged header: tensor {name!r} needs a dtype string, a shape and two data offsets, "
                f"has {str(info)[:200]}; download or save it again"
            )
        width = {"F32": 4, "F16": 2, "BF16": 2}.get(info["dtype"])
        begin, stop = info["data_offsets"]
        if width is not None and math.prod(info["shape"]) * width != stop - begin:
            raise CheckpointError(
                f"{file}: damaged header: tensor {name!r} of shape {info['shape']} ({info['dtype']}) "
                f"cannot fill its {stop - begin} bytes; download or save it again"
            )
        end = 8 + n + info["data_offsets"][1]
        if end > size:
            raise CheckpointError(
                f"{file}: truncated: tensor {name!r} needs bytes up to {end}, the file has {size}; "
                "download or save it again"
            )
    return header


def _ints(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def load_pretrained(path: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None) -> Transformer:
    """Load an HF-layout CWM checkpoint directory (ours, or the released `facebook/cwm`).

    dtype None keeps the checkpoint's dtype. Everything is checked before any weight is read.
    """
    path = Path(path)
    cfg = read_config(path)
    if (path / INDEX).is_file():
        index = _read_json(path / INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and "/" not in v and v not in ("", ".", "..")
            for k, v in weight_map.items()
        ):
            raise CheckpointError(
                f"{path / INDEX}: expected a JSON object whose \"weight_map\" maps tensor names to shard "
                "file names in the same directory; save or download the checkpoint again"
            )
    elif (path / SINGLE).is_file():
        weight_map = dict.fromkeys(_header(path / SINGLE), SINGLE)
    else:
        raise CheckpointError(f"{path}: no {INDEX} and no {SINGLE}: the checkpoint has no weights")

    expected = hf_shapes(cfg)
    by_file: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        if not (path / file).is_file():
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            raise CheckpointError(f"{path / file}: shard file missing (it holds tensor {names[0]!r}{more})")
        header = _header(path / file)
        for name in names:
            if name not in header:
                raise CheckpointError(f"{path / file}: tensor {name!r} is listed in {INDEX} but not in the file")
        for name, info in header.items():
            if name.endswith("rotary_emb.inv_freq"):
                continue  # recomputed from the config
            if name not in expected:
                raise CheckpointError(
                    f"{path / file}: unexpected tensor {name!r}: not part of a CWM model with this config.json"
                )
            if tuple(info["shape"]) != expected[name]:
                raise CheckpointError(
                    f"{path / file}: tensor {name!r} has shape {list(info['shape'])}, "
                    f"config.json implies {list(expected[name])}"
                )
            if info["dtype"] not in _DTYPES:
                raise CheckpointError(
                    f"{path / file}: tensor {name!r} has dtype {info['dtype']}; expected F32, F16 or BF16"
                )
    for name in expected:
        if name not in weight_map:
            listing = INDEX if (path / INDEX).is_file() else SINGLE
            raise CheckpointError(f"{path / listing}: tensor {name!r} is missing (no file of the checkpoint holds it)")

    hf = {}
    for file, names in by_file.items():
        try:
            with safe_open(path / file, framework="pt", device=str(device)) as f:
                for name in names:
                    if name in expected:
                        hf[name] = f.get_tensor(name) if dtype is None else f.get_tensor(name).to(dtype)
        except SafetensorError as e:  # what the checks above cannot see (overlapping offsets, ...)
            raise CheckpointError(f"{path / file}: cannot be read as safetensors: {e}") from None
    return model_from_state_dict(cfg, from_hf_state_dict(cfg, hf), device)


def model_from_state_dict(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], device) -> Transformer:
    """A Transformer around existing tensors, without allocating random weights first."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_state_dict(state_dict, assign=True, strict=True)
    model.inv_freq = rope_inv_freq(cfg, device=device)
    return model.to(device).eval()
