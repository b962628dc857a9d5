"""The network's shape: `ModelConfig`, the presets, and the mapping to Hugging Face's `config.json`.

Plain Python only (no torch), so `cwm model info` can size the 32B model without building it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

FULL, SLIDING = "full_attention", "sliding_attention"  # the values of HF's `layer_types`


# Bounds on a config's sizes, checked before anything is built or allocated. They admit the
# 32B preset with room to spare (and every dense Llama-style model published: Llama 3.1 405B has
# 126 layers, d_model 16384, ffn 53248, 128 heads), and refuse what is certainly corrupt.
LIMITS = {
    "vocab_size": (1, 1 << 21),  # 2,097,152 (the largest real vocabularies are ~256k)
    "dim": (1, 1 << 16),  # 65,536
    "n_layers": (1, 1024),
    "n_heads": (1, 1024),
    "n_kv_heads": (1, 1024),
    "head_dim": (2, 1024),
    "ffn_dim": (1, 1 << 20),  # 1,048,576
    "max_seq_len": (1, 1 << 24),  # 16,777,216 tokens
    "sliding_window": (1, 1 << 24),
    "rope_original_max_seq_len": (1, 1 << 24),
    "bos_token_id": (0, (1 << 21) - 1),
}
MAX_PARAMS = 1 << 42  # ~4.4T parameters


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 4352
    dim: int = 64  # d_model (HF: hidden_size)
    n_layers: int = 4
    n_heads: int = 4  # query heads
    n_kv_heads: int = 2  # GQA: n_heads must be a multiple of n_kv_heads
    head_dim: int = 16
    ffn_dim: int = 256  # SwiGLU hidden size (HF: intermediate_size)
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    # Attention pattern: sliding layers see the query and the `sliding_window - 1` tokens before it.
    sliding_window: int | None = 64
    # "meta": layer i is global when i % 4 == 0 or it is the last layer (the release, 17 of 64);
    # "hf": only i % 4 == 0 (the default of transformers' CwmConfig, 16 of 64).
    global_rule: str = "meta"
    # An explicit per-layer list ("full_attention" / "sliding_attention") overrides the rule;
    # loading a checkpoint always sets it from its config.json.
    layer_types: tuple[str, ...] | None = None
    # RoPE with Llama-3 scaling; rope_factor None means plain RoPE.
    rope_theta: float = 10_000.0
    rope_factor: float | None = 4.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 512
    bos_token_id: int | None = 4096
    eos_token_ids: tuple[int, ...] = (4097, 4104, 4105)

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"invalid ModelConfig: {msg}")

        # Types and sizes first, before anything is computed from them: a config with 10^8 layers
        # or a string for a size is refused here, not by a hang or a TypeError later.
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if value is None and name in ("sliding_window", "bos_token_id"):
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                bad(f"{name} must be an integer, not {value!r}")
            if not low <= value <= high:
                bad(f"{name} = {value} is outside [{low}, {high}] (the bounds any real model fits; see docs/model.md)")
        for name in ("norm_eps", "rope_theta", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
            value = getattr(self, name)
            if value is None and name == "rope_factor":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                bad(f"{name} must be a positive finite number, not {value!r}")
        if not isinstance(self.eos_token_ids, (list, tuple)) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < LIMITS["vocab_size"][1]
            for t in self.eos_token_ids[:65]
        ) or len(self.eos_token_ids) > 64:
            bad(f"eos_token_ids must be a short list of token ids, not {self.eos_token_ids!r}")
        if self.layer_types is not None and (
            not isinstance(self.layer_types, (list, tuple)) or not all(isinstance(t, str) for t in self.layer_types)
        ):
            bad(f"layer_types must be a list of strings, not {self.layer_types!r}")
        if self.n_kv_heads > self.n_heads:
            bad(f"n_kv_heads ({self.n_kv_heads}) cannot exceed n_heads ({self.n_heads})")
        if self.num_params() > MAX_PARAMS:
            bad(f"{self.num_params():,} parameters is over the limit of {MAX_PARAMS:,}")
        if self.n_heads % self.n_kv_heads:
            bad(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            bad(f"head_dim ({self.head_dim}) must be even for RoPE")
        if self.global_rule not in ("meta", "hf"):
            bad(f"global_rule must be 'meta' or 'hf', not {self.global_rule!r}")
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
            if len(self.layer_types) != self.n_layers:
                bad(f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")
            if unknown := set(self.layer_types) - {FULL, SLIDING}:
                bad(f"unknown layer types {sorted(unknown)}; use {FULL!r} or {SLIDING!r}")
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))

    # --- attention pattern -------------------------------------------------------------------

    def attention_types(self) -> tuple[str, ...]:
        """Per layer, FULL or SLIDING."""
        if self.sliding_window is None:
            return (FULL,) * self.n_layers
        if self.layer_types is not None:
            return self.layer_types
        last = self.n_layers - 1
        return tuple(
            FULL if i % 4 == 0 or (self.global_rule == "meta" and i == last) else SLIDING
            for i in range(self.n_layers)
        )

    def window(self, layer: int) -> int | None:
        """How many keys a query of `layer` may see (itself included); None = the whole causal past."""
        return self.sliding_window if self.attention_types()[layer] == SLIDING else None

    # --- sizes ---------------------------------------------------------------------------------

    def num_params(self) -> int:
        return self.vocab_size * self.dim * 2 + self.dim + self.n_layers * self._params_per_layer()

    def _params_per_layer(self) -> int:
        q = self.n_heads * self.head_dim
        kv = self.n_kv_heads * self.head_dim
        attention = self.dim * (2 * q + 2 * kv)  # wq, wo, wk, wv
        return attention + 3 * self.dim * self.ffn_dim + 2 * self.dim

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token of a `seq_len` sequence.

        6 * N for the matmuls, N without the input embedding (a lookup, not a matmul), plus
        6 * 2 * n_heads * head_dim * context per layer for QK^T and AV, where context is the
        whole sequence on global layers and the window on sliding ones (PaLM's convention of
        counting the full square, as nanoGPT and torchtitan do).
        """
        n = self.num_params() - self.vocab_size * self.dim
        attention = sum(
            12 * self.n_heads * self.head_dim * min(seq_len, self.window(i) or seq_len)
            for i in range(self.n_layers)
        )
        return 6.0 * n + attention

    def kv_cache_bytes(self, context: int, batch_size: int = 1, bytes_per_value: int = 2) -> int:
        """Memory of our KV cache at `context` tokens: sliding layers stop growing at the window."""
        per_token = 2 * self.n_kv_heads * self.head_dim * bytes_per_value * batch_size
        return sum(per_token * min(context, self.window(i) or context) for i in range(self.n_layers))

    # --- Hugging Face config.json --------------------------------------------------------------

    def rope_parameters(self) -> dict:
        if self.rope_factor is None:
            return {"rope_type": "default", "rope_theta": self.rope_theta}
        return {
            "rope_type": "llama3",
            "rope_theta": self.rope_theta,
            "factor": self.rope_factor,
            "low_freq_factor": self.rope_low_freq_factor,
            "high_freq_factor": self.rope_high_freq_factor,
            "original_max_position_embeddings": self.rope_original_max_seq_len,
        }

    def to_hf_dict(self) -> dict:
        """The fields of transformers' `CwmConfig`, as in the release's config.json."""
        return {
            "architectures": ["CwmForCausalLM"],
            "model_type": "cwm",
            "vocab_size": self.vocab_size,
            "hidden_size": self.dim,
            "intermediate_size": self.ffn_dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_seq_len,
            "initializer_range": 0.02,
            "rms_norm_eps": self.norm_eps,
            "rope_parameters": self.rope_parameters(),
            # HF needs some window even when every layer is global; layer_types then says so.
            "sliding_window": self.sliding_window or self.max_seq_len,
            "layer_types": list(self.attention_types()),
            "tie_word_embeddings": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids),
        }

    @classmethod
    def from_hf_dict(cls, hf: dict, source: str = "config.json") -> ModelConfig:
        """Read a CWM config.json: transformers v5 (`rope_parameters`) or v4 (`rope_theta` +
        `rope_scaling`, as the first `facebook/cwm` upload has it). `layer_types` is taken from
        the file; without it, transformers' default rule applies, as it would in transformers."""
        if not isinstance(hf, dict):
            raise ValueError(f"{source}: expected a JSON object of model settings, found a {type(hf).__name__}")
        if hf.get("model_type") != "cwm":
            raise ValueError(f"{source}: model_type is {hf.get('model_type')!r}, expected 'cwm'")
        if hf.get("tie_word_embeddings"):
            raise ValueError(f"{source}: tied embeddings are not a CWM architecture")
        if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias") or hf.get("attention_bias"):
            raise ValueError(f"{source}: only SwiGLU (silu) without biases is supported")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise ValueError(f"{source}: rope_parameters (or rope_scaling) must be a JSON object, not {rope!r:.80}")
        try:
            rope = dict(rope)
            rope.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            if rope_type not in ("default", "llama3"):
                raise ValueError(f"{source}: rope_type {rope_type!r} is not supported (default, llama3)")
            llama3 = rope_type == "llama3"
            eos = hf.get("eos_token_id")
            eos = [] if eos is None else [eos] if isinstance(eos, int) else eos
            n_heads = hf["num_attention_heads"]
            return cls(
                vocab_size=hf["vocab_size"],
                dim=hf["hidden_size"],
                n_layers=hf["num_hidden_layers"],
                n_heads=n_heads,
                n_kv_heads=hf.get("num_key_value_heads") or n_heads,
                head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
                ffn_dim=hf["intermediate_size"],
                norm_eps=hf.get("rms_norm_eps", 1e-5),
                max_seq_len=hf.get("max_position_embeddings", 131072),
                sliding_window=hf.get("sliding_window"),
                global_rule="hf",
                layer_types=hf.get("layer_types"),
                rope_theta=float(rope["rope_theta"]),
                rope_factor=float(rope["factor"]) if llama3 else None,
                rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
                rope_original_max_seq_len=int(rope.get("original_max_position_embeddings", 8192)),
                bos_token_id=hf.get("bos_token_id"),
                eos_token_ids=tuple(eos),
            )
        except KeyError as missing:
            raise ValueError(f"{source}: missing field {missing}") from None
        except (TypeError, ValueError, AttributeError, ZeroDivisionError) as e:  # a field of the wrong type or value
            message = str(e)
            for ours, theirs in _HF_NAMES.items():  # name the field as the file does
                message = message.replace(f"invalid ModelConfig: {ours} ", f"{theirs} ")
            raise ValueError(message if message.startswith(source) else f"{source}: {message}") from None


_HF_NAMES = {  # ModelConfig field -> config.json key, for messages about a config.json
    "vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
    "ffn_dim": "intermediate_size", "norm_eps": "rms_norm_eps", "max_seq_len": "max_position_embeddings",
    "sliding_window": "sliding_window", "bos_token_id": "bos_token_id", "eos_token_ids": "eos_token_id",
    "layer_types": "layer_types", "rope_theta": "rope_theta",
}

# The release (checked against the spec): 64 layers, d 6144, GQA 48/8, window 8192, 32.58B.
_PRESETS = {
    "cwm-32b": ModelConfig(
        vocab_size=128256,
        dim=6144,
        n_layers=64,
        n_heads=48,
        n_kv_heads=8,
        head_dim=128,
        ffn_dim=21504,
        max_seq_len=131072,
        sliding_window=8192,
        global_rule="meta",
        rope_theta=1_000_000.0,
        rope_factor=16.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_seq_len=8192,
        bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009),
    ),
    # The same structure at CPU size. Vocabulary: 4096 BPE tokens + 256 specials at the release's
    # offsets (BOS 4096, stops 4097/4104/4105). 4 layers with the Meta rule: global, sliding,
    # sliding, global. RoPE scaling parameters chosen so that some frequencies are scaled, some
    # smoothed and some untouched at head_dim 16.
    "cwm-tiny": ModelConfig(),  # ~0.8M parameters
    "cwm-small": ModelConfig(  # ~7.9M parameters, for CPU training runs
        dim=256,
        n_layers=8,
        n_heads=8,
        n_kv_heads=2,
        head_dim=32,
        ffn_dim=704,
        sliding_window=256,
        rope_original_max_seq_len=1024,
    ),
    # The world model this project ships (models/cwm-mini; docs/cwm-mini.md says how its shape
    # was chosen): ~1.9M parameters, local layers (1, 2) see 512 tokens (a trace's recent
    # frames), the global ones (0, 3) the whole context with the program.
    "cwm-mini": ModelConfig(
        dim=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        ffn_dim=384,
        sliding_window=512,
        rope_original_max_seq_len=1024,
    ),
}

PRESETS = tuple(_PRESETS)


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(_PRESETS[name], **overrides)


def format_bytes(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = min(int(math.log(max(n, 1), 1024)), len(units) - 1)
    return f"{n / 1024**i:.2f} {units[i]}"
