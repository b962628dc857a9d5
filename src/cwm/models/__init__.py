"""The world model this project trained and ships: cwm-mini (its model card is cwm-mini/README.md).

`cwm debug`, `cwm eval trace|cruxeval` and `cwm serve` use it when given no --model or --server,
and its tokenizer when given --server without --tokenizer. It lies inside the package, so an
installed cwm has it too, and loading it needs no network.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent / "cwm-mini"


def default_model() -> Path:
    """The shipped checkpoint directory (config.json, model.safetensors, tokenizer.json)."""
    if not (DEFAULT_MODEL / "config.json").is_file():
        raise FileNotFoundError(
            f"the shipped model is missing from {DEFAULT_MODEL}; reinstall cwm, or pass --model DIR"
        )
    return DEFAULT_MODEL
