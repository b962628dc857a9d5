"""The CWM network: config and presets, transformer, KV cache, generation, checkpoint I/O.

    from cwm.model import ModelConfig, get_preset, Transformer, save_pretrained, load_pretrained, generate
"""

from cwm.model.checkpoint import CheckpointError, load_pretrained, save_pretrained
from cwm.model.config import PRESETS, ModelConfig, get_preset
from cwm.model.generate import generate, sample
from cwm.model.transformer import Transformer

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ModelConfig",
    "Transformer",
    "generate",
    "get_preset",
    "load_pretrained",
    "sample",
    "save_pretrained",
]
